"""``bids``: a BIDS tree (``sub-*/[ses-*/]anat/*_T2w.nii.gz``) with labels under ``derivatives/``.

Options (defaults in brackets)::

    suffix: T2w                          # image suffix
    extension: .nii.gz
    labels: "derivatives/labels/{anat_dir}/{stem}_seg-manual.nii.gz"   # {anat_dir}: sub-X[/ses-Y]/anat
    participants: participants.tsv
    columns: {sex: sex, age: age, vendor: manufacturer, scanner_model: manufacturers_model_name, ...}

Metadata: the JSON sidecar beside each image (``Manufacturer``, ``ManufacturersModelName``,
``MagneticFieldStrength``) wins over ``participants.tsv`` for the scanner; demographics come from
``participants.tsv``. ``local_id`` is the image stem without the suffix (``sub-01_ses-02``);
``patient_id`` is the subject. A sidecar without its image is a ``MissingImage`` failure, an image whose
subject has no ``participants.tsv`` row a ``MissingMetadata`` failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

logger = logging.getLogger(__name__)

__all__ = ["iter_bids", "DEFAULT_COLUMNS"]

DEFAULT_COLUMNS = {
    "patient_id": "participant_id",
    "vendor": "manufacturer",
    "scanner_model": "manufacturers_model_name",
    "field_strength": "magnetic_field_strength",
}
_SIDECAR_KEYS = {"vendor": "Manufacturer", "scanner_model": "ManufacturersModelName", "field_strength": "MagneticFieldStrength"}


def _scan(root: Path, suffix: str, extension: str) -> dict[str, dict[str, Path]]:
    """stem -> {"image": path, "sidecar": path} for every ``*_<suffix>`` file in ``sub-*/[ses-*/]anat``."""
    found: dict[str, dict[str, Path]] = {}
    for anat in sorted([*root.glob("sub-*/anat"), *root.glob("sub-*/ses-*/anat")]):
        for path in anat.iterdir():
            name = path.name
            for kind, ext in (("image", extension), ("sidecar", ".json")):
                if name.endswith(f"_{suffix}{ext}"):
                    found.setdefault(name[: -len(ext)], {})[kind] = path
    return found


def _sidecar(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SiteDataError(f"JSON sidecar {path} cannot be read: {exc}") from exc
    return {k: data.get(v) for k, v in _SIDECAR_KEYS.items() if data.get(v) is not None}


def iter_bids(config: SiteConfig) -> Iterator[RawCase | CaseFailure]:
    """Yield the cases of a BIDS site (see the module docstring)."""
    where = f"sites[{config.name}].options"
    suffix = str(config.option("suffix", "T2w"))
    extension = str(config.option("extension", ".nii.gz"))
    labels = str(config.option("labels", "derivatives/labels/{anat_dir}/{stem}_seg-manual.nii.gz"))
    try:
        participants_path = site_path(config, str(config.option("participants", "participants.tsv")), what="participants table")
    except PathOutsideRootError as exc:
        raise SiteDataError(f"{where}.participants: {exc}") from None
    participants: dict[str, dict[str, Any]] = {}
    columns: dict[str, str] = {}
    if participants_path.is_file():
        table = read_table(participants_path, what="participants table")
        columns = resolve_columns(list(table.columns), config.option("columns"), where=where, defaults=DEFAULT_COLUMNS)
        id_col = columns.get("patient_id", "participant_id")
        if id_col not in table.columns:
            raise SiteDataError(f"{participants_path}: no participant_id column; columns are {list(table.columns)}")
        participants = {str(r[id_col]).strip(): r for r in table.to_dict("records")}
    elif config.option("participants") is not None:
        raise SiteDataError(f"{where}.participants: {participants_path} not found")
    if not config.root.is_dir():
        raise SiteDataError(f"sites[{config.name}].root: folder {config.root} not found")
    for stem, files in _scan(config.root, suffix, extension).items():
        local_id = stem[: -len(f"_{suffix}")]
        case_id = f"{config.name}/{local_id}"
        subject = local_id.split("_")[0]
        anat_dir = (files.get("image") or files["sidecar"]).parent.relative_to(config.root).as_posix()
        image = files.get("image", config.root / anat_dir / f"{stem}{extension}")
        try:
            image = site_path(config, image.relative_to(config.root), what="image")
            label = site_path(config, labels.format(anat_dir=anat_dir, stem=stem, subject=subject), what="label")
            sidecar = files.get("sidecar") and site_path(config, files["sidecar"].relative_to(config.root), what="JSON sidecar")
        except PathOutsideRootError as exc:
            yield CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            continue
        row = participants.get(subject)
        if row is None and participants:
            yield CaseFailure(case_id, "adapter", f"subject {subject!r} has no row in {participants_path}", "MissingMetadata", config.name)
            continue
        metadata = raw_metadata(row or {}, columns)
        metadata.update(_sidecar(sidecar or None))
        session = next((p for p in local_id.split("_") if p.startswith("ses-")), None)
        case = RawCase(local_id, image, label, patient_id=subject, metadata=metadata, extra={"session": session} if session else {})
        if "image" not in files:
            yield case.failed(missing_file_failure(case_id, config.name, "image", image))
        elif not label.is_file():
            yield case.failed(missing_file_failure(case_id, config.name, "label", label))
        else:
            yield case


register_adapter(
    Adapter(
        name="bids",
        iter_cases=iter_bids,
        options=frozenset({"suffix", "extension", "labels", "participants", "columns"}),
        default_label_map=None,
        description="BIDS tree with derivatives/labels, participants.tsv and JSON sidecars",
        path_options=frozenset({"labels", "participants"}),
    )
)
