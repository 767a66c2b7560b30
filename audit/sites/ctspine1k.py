"""``ctspine1k``: one CTSpine1K source (COLONOG, HNSCC-3DCT-RT, MSD liver, COVID-19) as one site.

CTSpine1K (github.com/MIRACLE-Center/CTSpine1K, ReadMe.md) stores each CT as ``<id>.nii.gz`` with its
vertebra mask ``<id>_seg.nii.gz`` (labels 1-25, VerSe numbering: label map ``ctspine1k``). Each source is a
site, because scanners, protocols and fields of view differ by source (``sites/ctspine1k-*.yaml``).

Options (defaults in brackets)::

    images_dir: "{source}"      # folder of <id>.nii.gz, relative to root ({source} = the source option)
    labels_dir: "{source}"      # folder of <id>_seg.nii.gz
    source: COLONOG             # one of SOURCES (checked: the folder name a reviewer sees)
    patient_pattern: null       # regex with a group 'patient' taken from the case id (repeated scans of a patient)
    metadata: null              # optional CSV/TSV with a case_id column and raw metadata columns (vendor, kvp, ...)
    ct_defaults: {}             # CT values for the whole source, e.g. {contrast: non-contrast} for COVID-19

A JSON sidecar ``<id>.json`` beside the image (dcm2niix) supplies manufacturer, model, kVp, slice thickness,
kernel and contrast when present. Failures: an image without ``_seg`` mask, a mask without image.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.records import CaseFailure
from audit.sites.base import Adapter, RawCase, SiteDataError, missing_file_failure, read_table, register_adapter
from audit.sites.config import SiteConfig
from audit.sites.ct import ct_extra_from_raw, read_sidecar

logger = logging.getLogger(__name__)

__all__ = ["SOURCES", "iter_ctspine1k"]

#: The four CTSpine1K sources (README of the dataset).
SOURCES: tuple[str, ...] = ("COLONOG", "HNSCC-3DCT-RT", "MSD-liver", "COVID-19")
_IMAGE_SUFFIX, _LABEL_SUFFIX = ".nii.gz", "_seg.nii.gz"


def _scan(folder: Path, suffix: str, exclude: str | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(suffix) and not (exclude and name.endswith(exclude)) and entry.is_file():
                out[name[: -len(suffix)]] = folder / name
    return out


def _metadata_rows(config: SiteConfig) -> dict[str, dict[str, Any]]:
    table_name = config.option("metadata")
    if not table_name:
        return {}
    table = read_table(config.root / str(table_name))
    if "case_id" not in table.columns:
        raise SiteDataError(f"sites[{config.name}].options.metadata: the table needs a case_id column; columns are {list(table.columns)}")
    return {str(r["case_id"]).strip(): r for r in table.to_dict("records")}


def iter_ctspine1k(config: SiteConfig) -> Iterator[RawCase | CaseFailure]:
    """Yield the cases of one CTSpine1K source (see the module docstring)."""
    where = f"sites[{config.name}].options"
    source = str(config.option("source", "COLONOG"))
    if source not in SOURCES:
        raise SiteDataError(f"{where}.source: allowed values {list(SOURCES)}; found {source!r}")
    images = config.root / str(config.option("images_dir", "{source}")).format(source=source)
    labels = config.root / str(config.option("labels_dir", "{source}")).format(source=source)
    if not images.is_dir():
        raise SiteDataError(f"{where}.images_dir: folder {images} not found")
    pattern = config.option("patient_pattern")
    try:
        patient_re = re.compile(str(pattern)) if pattern else None
    except re.error as exc:
        raise SiteDataError(f"{where}.patient_pattern: not a regular expression ({exc}); found {pattern!r}") from None
    if patient_re is not None and "patient" not in patient_re.groupindex:
        raise SiteDataError(f"{where}.patient_pattern: needs a named group (?P<patient>...); found {pattern!r}")
    defaults = config.option("ct_defaults") or {}
    table = _metadata_rows(config)
    image_ids = _scan(images, _IMAGE_SUFFIX, _LABEL_SUFFIX)
    label_ids = _scan(labels, _LABEL_SUFFIX, None)
    for local_id in sorted(image_ids):
        case_id = f"{config.name}/{local_id}"
        try:
            general, ct_raw = read_sidecar(images / f"{local_id}.json")
        except ValueError as exc:
            yield CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            continue
        row = table.get(local_id, {})
        for key in ("vendor", "scanner_model", "age", "sex", "race", "ethnicity"):
            if row.get(key) not in (None, ""):
                general[key] = row[key]
        for key in ("kvp", "slice_thickness", "kernel", "contrast"):
            if row.get(key) not in (None, ""):
                ct_raw[key] = row[key]
        patient = None
        if patient_re is not None:
            match = patient_re.search(local_id)
            if match is None:
                yield CaseFailure(case_id, "adapter", f"case id {local_id!r} does not match patient_pattern {pattern!r}", "PatientPattern", config.name)
                continue
            patient = match.group("patient")
        extra = {"ct_source": source, **ct_extra_from_raw(ct_raw, defaults)}
        label = label_ids.get(local_id, labels / f"{local_id}{_LABEL_SUFFIX}")
        case = RawCase(local_id, image_ids[local_id], label, patient_id=patient, metadata=general, extra=extra)
        # a missing mask fails the case but keeps its metadata in the manifest (counted in its groups)
        yield case if local_id in label_ids else case.failed(missing_file_failure(case_id, config.name, "label", label))
    for local_id in sorted(set(label_ids) - set(image_ids)):
        yield CaseFailure(f"{config.name}/{local_id}", "adapter", f"mask {label_ids[local_id]} has no image {local_id}{_IMAGE_SUFFIX}", "MissingImage", config.name)


register_adapter(
    Adapter(
        name="ctspine1k",
        iter_cases=iter_ctspine1k,
        options=frozenset({"images_dir", "labels_dir", "source", "patient_pattern", "metadata", "ct_defaults"}),
        default_label_map="ctspine1k",
        description="One CTSpine1K source: <id>.nii.gz CT plus <id>_seg.nii.gz vertebra mask (labels 1-25)",
    )
)
