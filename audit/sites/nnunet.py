"""``nnunet``: an nnU-Net raw dataset folder (``DatasetXXX_Name/``).

Layout: ``dataset.json``, ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>`` and the same for
``Ts``. The file ending comes from ``dataset.json`` (``file_ending``, default ``.nii.gz``).

Options (defaults in brackets)::

    splits: [Tr, Ts]          # a split without its labels folder is skipped
    channel: 0                # which _XXXX image channel is the T2w image
    metadata: null            # optional CSV/TSV keyed by the nnU-Net case identifier
    columns: {...}            # as nifti_table

Without ``label_map`` in the config, the map comes from ``dataset.json`` ``labels`` when its names are
ontology structures (``{"background": 0, "vertebral_body": 1, ...}``; the nnU-Net v1 form
``{"0": "background", "1": ...}`` also works). The manifest gets a ``split`` column (``Tr``/``Ts``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.ontology import structure
from audit.records import CaseFailure
from audit.sites.base import (
    Adapter,
    PathOutsideRootError,
    RawCase,
    SiteDataError,
    missing_file_failure,
    raw_metadata,
    read_table,
    register_adapter,
    resolve_columns,
    site_path,
)
from audit.sites.config import SiteConfig
from audit.sites.nifti_table import DEFAULT_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["iter_nnunet", "label_map_from_dataset_json"]


def _dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SiteDataError(f"{path} is not valid JSON: {exc}") from exc


def label_map_from_dataset_json(root: Path) -> dict[int, str] | None:
    """Label map ``{value: structure}`` from ``dataset.json``, or None if absent or names are not ontology names.

    Raises
    ------
    SiteDataError
        If the labels use nnU-Net regions (lists of values), which need an explicit ``label_map``.
    """
    labels = _dataset_json(root).get("labels")
    if not isinstance(labels, dict):
        return None
    pairs: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, list):
            raise SiteDataError(f"{root / 'dataset.json'}: region-based label {key!r}: {value} needs an explicit label_map")
        name, number = (value, key) if str(key).isdigit() else (key, value)
        number = int(number)
        if number == 0:
            continue
        try:
            structure(str(name))
        except KeyError:
            logger.info("dataset.json label %r is not an ontology structure; set label_map in the site config", name)
            return None
        pairs[number] = str(name)
    return pairs or None


def iter_nnunet(config: SiteConfig) -> Iterator[RawCase | CaseFailure]:
    """Yield the cases of an nnU-Net raw dataset (see the module docstring)."""
    where = f"sites[{config.name}].options"
    if not config.root.is_dir():
        raise SiteDataError(f"sites[{config.name}].root: folder {config.root} not found")
    ending = str(_dataset_json(config.root).get("file_ending", ".nii.gz"))
    channel = f"_{int(config.option('channel', 0)):04d}{ending}"
    splits = config.option("splits", ["Tr", "Ts"])
    if not isinstance(splits, list) or set(splits) - {"Tr", "Ts"}:
        raise SiteDataError(f"{where}.splits: allowed values are ['Tr', 'Ts']; found {splits!r}")
    rows: dict[str, dict[str, Any]] = {}
    columns: dict[str, str] = {}
    if config.option("metadata"):
        try:
            table = read_table(site_path(config, str(config.option("metadata")), what="metadata table"))
        except PathOutsideRootError as exc:
            raise SiteDataError(f"{where}.metadata: {exc}") from None
        columns = resolve_columns(list(table.columns), config.option("columns"), where=where, defaults=DEFAULT_COLUMNS)
        if "case_id" not in columns:
            raise SiteDataError(f"{where}.columns.case_id: no case id column; columns are {list(table.columns)}")
        rows = {str(r[columns["case_id"]]).strip(): r for r in table.to_dict("records")}
    for split in splits:
        image_dir, label_dir = config.root / f"images{split}", config.root / f"labels{split}"
        if not label_dir.is_dir():
            logger.info("site %s: no labels%s folder; split skipped", config.name, split)
            continue
        image_ids = {p.name[: -len(channel)] for p in image_dir.glob(f"*{channel}")} if image_dir.is_dir() else set()
        label_ids = {p.name[: -len(ending)] for p in label_dir.glob(f"*{ending}")}
        for local_id in sorted(image_ids | label_ids):
            case_id = f"{config.name}/{local_id}"
            try:
                image = site_path(config, f"images{split}/{local_id}{channel}", what="image")
                label = site_path(config, f"labels{split}/{local_id}{ending}", what="label")
            except PathOutsideRootError as exc:
                yield CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
                continue
            row = rows.get(local_id)
            if row is None and rows:
                yield CaseFailure(case_id, "adapter", f"case {local_id!r} has no row in the metadata table", "MissingMetadata", config.name)
                continue
            patient = (row or {}).get(columns["patient_id"]) if "patient_id" in columns else None
            case = RawCase(local_id, image, label, patient_id=patient, metadata=raw_metadata(row or {}, columns), extra={"split": split})
            if local_id not in image_ids:
                yield case.failed(missing_file_failure(case_id, config.name, "image", image))
            elif local_id not in label_ids:
                yield case.failed(missing_file_failure(case_id, config.name, "label", label))
            else:
                yield case


register_adapter(
    Adapter(
        name="nnunet",
        iter_cases=iter_nnunet,
        options=frozenset({"splits", "channel", "metadata", "columns"}),
        infer_label_map=lambda root: label_map_from_dataset_json(root),
        description="nnU-Net raw dataset: imagesTr/labelsTr/imagesTs/labelsTs, dataset.json labels",
        path_options=frozenset({"metadata"}),
    )
)
