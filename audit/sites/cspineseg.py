"""``cspineseg``: CSpineSeg / MIDRC structured tables joined to NIfTI images and segmentations.

Tables (tab-separated, found by glob in ``root``): ``case_<RELEASE>.tsv`` (one row per patient:
``submitter_id``, ``age_at_index``, ``age_at_index_gt89``, ``sex``, ``race``, ``ethnicity``, ``site_id``) and
``mr_series_<RELEASE>.tsv`` (one row per series: ``case_ids``, ``imaging_studies.submitter_id``,
``series_uid``, ``manufacturer``, ``manufacturer_model_name``, ``magnetic_field_strength``, ...).
Each series row is a case; it joins its patient on ``mr_series.case_ids == case.submitter_id``.

Options (defaults in brackets)::

    release: null                                   # pick case_<release>.tsv when several exist
    images: "nifti/{case}-{study}-{series}.nii.gz"  # {case}, {study}, {series} from the series row
    labels: "segmentation/{case}-{study}-{series}_SEG.nii.gz"
    local_id: "{case}-{study}-{series}"
    series_filter: null                              # {column: value}: keep only matching series rows

Site ``label_map`` defaults to ``cspineseg`` (1 vertebral body, 2 disc). The file-name patterns follow
the published release (``<patient>-<study>-<series>.nii.gz``, ``..._SEG.nii.gz``); adjust them to your copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from audit.records import CaseFailure
from audit.sites.base import (
    Adapter,
    PathOutsideRootError,
    RawCase,
    SiteDataError,
    missing_file_failure,
    path_in_root,
    read_table,
    register_adapter,
    site_path,
)
from audit.sites.config import SiteConfig

logger = logging.getLogger(__name__)

__all__ = ["iter_cspineseg", "find_release_table"]

_CASE_COLUMNS = {"age": "age_at_index", "age_redacted": "age_at_index_gt89", "sex": "sex", "race": "race", "ethnicity": "ethnicity"}
_SERIES_COLUMNS = {"vendor": "manufacturer", "scanner_model": "manufacturer_model_name", "field_strength": "magnetic_field_strength"}
_FIELDS = {"case": "case_ids", "study": "imaging_studies.submitter_id", "series": "series_uid"}


def find_release_table(root: Path, kind: str, release: str | None, *, symlinks: str = "refuse") -> Path:
    """The ``<kind>_<release>.tsv`` table in ``root``; exactly one must match when ``release`` is None.

    Raises
    ------
    SiteDataError
        If no table or several match, ``release`` holds a path separator or ``..``, or the table is a
        symbolic link out of ``root`` (see :func:`audit.sites.base.path_in_root`).
    """
    if release and (any(c in str(release) for c in "/\\*?[") or ".." in str(release)):
        raise SiteDataError(f"cspineseg: options.release must be a plain release name (no '/', '..' or wildcards); found {release!r}")
    pattern = f"{kind}_{release}.tsv" if release else f"{kind}_*.tsv"
    matches = sorted(root.glob(pattern))
    if len(matches) != 1:
        raise SiteDataError(
            f"cspineseg: expected one table matching {pattern!r} in {root}; found {[m.name for m in matches]} (set options.release)"
        )
    try:
        return path_in_root(root, matches[0].name, what=f"{kind} table", symlinks=symlinks)
    except PathOutsideRootError as exc:
        raise SiteDataError(f"cspineseg: {exc}") from None


def _safe(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{what} {value!r} cannot be used in a file name")
    return value


def iter_cspineseg(config: SiteConfig) -> Iterator[RawCase | CaseFailure]:
    """Yield one case per MR series row (see the module docstring)."""
    release = config.option("release")
    symlinks = str(config.option("symlinks", "refuse"))
    cases = read_table(find_release_table(config.root, "case", release, symlinks=symlinks), what="case table")
    series = read_table(find_release_table(config.root, "mr_series", release, symlinks=symlinks), what="mr_series table")
    for table, needed, name in ((cases, ["submitter_id"], "case"), (series, list(_FIELDS.values()), "mr_series")):
        absent = [c for c in needed if c not in table.columns]
        if absent:
            raise SiteDataError(f"cspineseg: {name} table lacks columns {absent}; columns are {list(table.columns)}")
    patients = {}
    for row in cases.to_dict("records"):
        patients.setdefault(str(row["submitter_id"]).strip(), row)
    images = str(config.option("images", "nifti/{case}-{study}-{series}.nii.gz"))
    labels = str(config.option("labels", "segmentation/{case}-{study}-{series}_SEG.nii.gz"))
    local_pattern = str(config.option("local_id", "{case}-{study}-{series}"))
    filters = dict(config.option("series_filter") or {})
    for index, row in enumerate(series.to_dict("records")):
        if any(str(row.get(k, "")) != str(v) for k, v in filters.items()):
            continue
        fields = {k: str(row[c]).strip() for k, c in _FIELDS.items()}
        try:
            fields = {k: _safe(v, c) for (k, v), c in zip(fields.items(), _FIELDS.values())}
        except ValueError as exc:
            yield CaseFailure(f"{config.name}/<series row {index + 1}>", "adapter", str(exc), "BadIdentifier", config.name)
            continue
        local_id = local_pattern.format(**fields)
        case_id = f"{config.name}/{local_id}"
        try:
            image = site_path(config, images.format(**fields), what="image")
            label = site_path(config, labels.format(**fields), what="label")
        except PathOutsideRootError as exc:
            yield CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            continue
        patient = patients.get(fields["case"])
        if patient is None:
            yield CaseFailure(case_id, "adapter", f"patient {fields['case']!r} has no row in the case table", "MissingMetadata", config.name)
            continue
        metadata = {k: patient.get(c) for k, c in _CASE_COLUMNS.items()} | {k: row.get(c) for k, c in _SERIES_COLUMNS.items()}
        extra = {"cspineseg_site_id": patient.get("site_id")} if patient.get("site_id") not in (None, "") else {}
        case = RawCase(local_id, image, label, patient_id=fields["case"], metadata=metadata, extra=extra)
        if not image.is_file():
            yield case.failed(missing_file_failure(case_id, config.name, "image", image))
        elif not label.is_file():
            yield case.failed(missing_file_failure(case_id, config.name, "label", label))
        else:
            yield case


register_adapter(
    Adapter(
        name="cspineseg",
        iter_cases=iter_cspineseg,
        options=frozenset({"release", "images", "labels", "local_id", "series_filter"}),
        default_label_map="cspineseg",
        description="CSpineSeg / MIDRC case_*.tsv + mr_series_*.tsv joined to NIfTI images and segmentations",
        path_options=frozenset({"images", "labels"}),
    )
)
