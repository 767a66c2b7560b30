"""Schemas of the tables that pass between pipeline stages.

Every stage reads and writes plain, tidy :class:`pandas.DataFrame` objects whose
columns are named here, so that each stage can run alone from files on disk.

* The **manifest**: one row per case (``MANIFEST_COLUMNS``).
* The **metric table**: one row per case, structure and metric (``METRIC_COLUMNS``).
* A **failure**: a :class:`CaseFailure`, recorded instead of raising, so that a bad case
  is counted and listed in the report and never silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "UNKNOWN",
    "VENDORS",
    "FIELD_STRENGTHS",
    "SEXES",
    "RACES",
    "ETHNICITIES",
    "MANIFEST_COLUMNS",
    "METADATA_COLUMNS",
    "METRIC_COLUMNS",
    "STATUSES",
    "EVALUABLE_STATUSES",
    "NOT_ASSESSED",
    "FAILURE_COLUMNS",
    "CaseFailure",
    "ManifestRow",
    "empty_manifest",
    "empty_metric_table",
    "failure_table",
    "validate_manifest",
    "DEFAULT_AGE_BAND_EDGES",
    "age_band_labels",
    "age_bands",
    "validate_metric_table",
    "failed_case_rows",
    "not_assessed_rows",
]

UNKNOWN = "Unknown"

#: Canonical vendor names (DESIGN.md).
VENDORS: tuple[str, ...] = (
    "GE",
    "Siemens",
    "Philips",
    "Canon",
    "Hitachi/Fujifilm",
    "United Imaging",
    "Other",
    UNKNOWN,
)
#: Canonical field-strength categories; the numeric value lives in ``field_strength_t``.
FIELD_STRENGTHS: tuple[str, ...] = ("1.5T", "3T", "other", UNKNOWN)
SEXES: tuple[str, ...] = ("F", "M", "Other", UNKNOWN)
#: OMB race categories.
RACES: tuple[str, ...] = (
    "American Indian or Alaska Native",
    "Asian",
    "Black or African American",
    "Native Hawaiian or Other Pacific Islander",
    "White",
    "More than one race",
    "Other",
    UNKNOWN,
)
ETHNICITIES: tuple[str, ...] = ("Hispanic or Latino", "Not Hispanic or Latino", UNKNOWN)

#: Harmonized metadata columns; each has a ``<column>_raw`` twin holding the value as found.
METADATA_COLUMNS: tuple[str, ...] = (
    "vendor",
    "field_strength_t",
    "field_strength",
    "scanner_model",
    "age_years",
    "sex",
    "race",
    "ethnicity",
)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id",
    "site",
    "patient_id",
    "image_path",
    "label_path",
    "prediction_path",
    *METADATA_COLUMNS,
)

#: Status of a structure that the case's site does not annotate in its reference standard (site config
#: ``annotates``): no metric is computed, it is never a false positive and never enters that structure's statistics.
NOT_ASSESSED = "not_assessed"
#: Per-structure status values of the metric table.
STATUSES: tuple[str, ...] = ("ok", "missed", "false_positive", "both_empty", "failed", NOT_ASSESSED)
#: Statuses whose (finite) values enter estimates; ``both_empty`` and ``failed`` are counted instead, and
#: ``not_assessed`` rows belong to no structure's statistics.
EVALUABLE_STATUSES: tuple[str, ...] = ("ok", "missed", "false_positive")

#: Default age-band edges in years (the protocol's ``subgroups.age_bands``): 18-39, 40-59, 60-74, 75+.
DEFAULT_AGE_BAND_EDGES: tuple[float, ...] = (18.0, 40.0, 60.0, 75.0, 120.0)


def age_band_labels(edges: Iterable[float]) -> list[str]:
    """Band labels from edges: [18, 40, 60, 75, 120] -> 18-39, 40-59, 60-74, 75+ (the last band open in its label).

    Examples
    --------
    >>> age_band_labels([18, 40, 60, 120])
    ['18-39', '40-59', '60+']
    """
    edges = [float(e) for e in edges]
    return [f"{lo:g}+" if i == len(edges) - 2 else f"{lo:g}-{hi - 1:g}" for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]


def age_bands(ages: Iterable[Any], edges: Iterable[float]) -> np.ndarray:
    """The age band of each age: the one rule used by ``sites check``, Table 1, the statistics and the report.

    Bands are left-closed ``[lo, hi)``. A missing or non-numeric age, or one outside ``[edges[0], edges[-1])``,
    is ``Unknown`` (so it is counted in its own group, never dropped). A redacted age (90 for ``>89``) falls in
    the band holding 90.

    Raises
    ------
    ValueError
        If there are fewer than two edges or they are not strictly increasing.

    Examples
    --------
    >>> age_bands([17.9, 18, 39.99, 75, 90, None, 120], [18, 40, 60, 75, 120]).tolist()
    ['Unknown', '18-39', '18-39', '75+', '75+', 'Unknown', 'Unknown']
    """
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges: need at least two strictly increasing age edges; received {list(edges)}")
    values = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(dtype=float)
    labels = np.asarray(age_band_labels(edges), dtype=object)
    idx = np.searchsorted(np.asarray(edges), values, side="right") - 1
    in_range = np.isfinite(values) & (idx >= 0) & (idx < len(labels))
    return np.where(in_range, labels[np.clip(idx, 0, len(labels) - 1)], UNKNOWN).astype(object)


METRIC_COLUMNS: tuple[str, ...] = (
    "case_id",
    "structure",
    "metric",
    "value",
    "status",
    "reference_volume_ml",
    "predicted_volume_ml",
    "error",
)

FAILURE_COLUMNS: tuple[str, ...] = ("case_id", "site", "stage", "error_type", "error")


@dataclasses.dataclass(frozen=True)
class CaseFailure:
    """A case that could not be processed at some stage.

    Parameters
    ----------
    case_id : str
        The audit-wide case identifier.
    stage : str
        Pipeline stage that failed (``"adapter"``, ``"harmonize"``, ``"inference"``, ``"metrics"``).
    error : str
        Human-readable message, naming what was wrong and what was expected.
    error_type : str
        Exception class name or a short machine-readable kind.
    site : str
        Site of the case, when known.
    """

    case_id: str
    stage: str
    error: str
    error_type: str = "Error"
    site: str = UNKNOWN

    @classmethod
    def from_exception(cls, case_id: str, stage: str, exc: BaseException, site: str = UNKNOWN) -> CaseFailure:
        """Build a failure from an exception, keeping its type and message."""
        return cls(case_id=case_id, stage=stage, error=str(exc) or repr(exc), error_type=type(exc).__name__, site=site)

    def as_dict(self) -> dict[str, str]:
        """Return the failure as a row of the failure table."""
        return {k: getattr(self, k) for k in FAILURE_COLUMNS}


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One case of the manifest (see ``MANIFEST_COLUMNS``); ``extra`` holds raw and protocol columns."""

    case_id: str
    site: str
    patient_id: str
    image_path: str
    label_path: str
    prediction_path: str | None = None
    vendor: str = UNKNOWN
    field_strength_t: float = float("nan")
    field_strength: str = UNKNOWN
    scanner_model: str = UNKNOWN
    age_years: float = float("nan")
    sex: str = UNKNOWN
    race: str = UNKNOWN
    ethnicity: str = UNKNOWN
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flatten into one manifest record (``extra`` columns appended)."""
        row = {c: getattr(self, c) for c in MANIFEST_COLUMNS}
        row.update(self.extra)
        return row


def empty_manifest() -> pd.DataFrame:
    """Return an empty manifest with the canonical columns."""
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("field_strength_t", "age_years") else "object") for c in MANIFEST_COLUMNS})


def empty_metric_table() -> pd.DataFrame:
    """Return an empty metric table with the canonical columns and dtypes."""
    dtypes = {"value": "float64", "reference_volume_ml": "float64", "predicted_volume_ml": "float64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in METRIC_COLUMNS})


def failure_table(failures: Iterable[CaseFailure]) -> pd.DataFrame:
    """Collect failures into the failure table (columns ``FAILURE_COLUMNS``)."""
    rows = [f.as_dict() for f in failures]
    return pd.DataFrame(rows, columns=list(FAILURE_COLUMNS))


def _whole_case_rows(case_id: str, structures: Iterable[str], metrics: Iterable[str], status: str, error: str | None) -> list[dict[str, Any]]:
    return [
        {
            "case_id": case_id,
            "structure": s,
            "metric": m,
            "value": np.nan,
            "status": status,
            "reference_volume_ml": np.nan,
            "predicted_volume_ml": np.nan,
            "error": error,
        }
        for s in structures
        for m in metrics
    ]


def failed_case_rows(
    case_id: str, structures: Iterable[str], metrics: Iterable[str], error: str, *, not_assessed: Iterable[str] = ()
) -> pd.DataFrame:
    """Metric-table rows for a case that failed as a whole: status ``failed``, value NaN, the error kept.

    These rows keep a failed case visible in every count; statistics report them as failures
    instead of dropping them. Structures in ``not_assessed`` (those the case's site does not annotate) get
    status ``not_assessed`` instead: a failure cannot be counted against a structure that was never annotated.

    Examples
    --------
    >>> failed_case_rows("A/1", ["vertebral_body", "spinal_cord"], ["dice"], "corrupt", not_assessed=["spinal_cord"])["status"].tolist()
    ['failed', 'not_assessed']
    """
    skip = set(not_assessed)
    rows = [
        row
        for s in structures
        for row in _whole_case_rows(case_id, [s], metrics, NOT_ASSESSED if s in skip else "failed", None if s in skip else error)
    ]
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS)) if rows else empty_metric_table()


def not_assessed_rows(case_id: str, structures: Iterable[str], metrics: Iterable[str]) -> pd.DataFrame:
    """Metric-table rows (status ``not_assessed``, value NaN) for structures the case's site does not annotate."""
    rows = _whole_case_rows(case_id, structures, metrics, NOT_ASSESSED, None)
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS)) if rows else empty_metric_table()


def _missing(table: pd.DataFrame, required: Iterable[str]) -> list[str]:
    return [c for c in required if c not in table.columns]


def validate_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Check a manifest against the contract and return it with canonical dtypes.

    Raises
    ------
    ValueError
        If a required column is missing, a ``case_id`` repeats, or a categorical column holds
        a value outside its vocabulary.
    """
    missing = _missing(manifest, MANIFEST_COLUMNS)
    if missing:
        raise ValueError(f"manifest: missing columns {missing}; required columns are {list(MANIFEST_COLUMNS)}")
    dup = manifest["case_id"][manifest["case_id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"manifest: case_id must be unique; repeated values {dup[:10]}")
    vocab = {"vendor": VENDORS, "field_strength": FIELD_STRENGTHS, "sex": SEXES, "race": RACES, "ethnicity": ETHNICITIES}
    for col, allowed in vocab.items():
        bad = sorted(set(manifest[col].dropna().astype(str)) - set(allowed))
        if bad:
            raise ValueError(f"manifest: column {col!r} allows {list(allowed)}; found {bad}")
        if manifest[col].isna().any():
            raise ValueError(f"manifest: column {col!r} has missing values; use {UNKNOWN!r} instead")
    out = manifest.copy()
    for col in ("field_strength_t", "age_years"):
        out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
    return out


def validate_metric_table(table: pd.DataFrame) -> pd.DataFrame:
    """Check a metric table against the contract.

    Raises
    ------
    ValueError
        If a column is missing, a status is outside ``STATUSES``, or a non-failed row has a NaN value.
    """
    missing = _missing(table, METRIC_COLUMNS)
    if missing:
        raise ValueError(f"metric table: missing columns {missing}; required columns are {list(METRIC_COLUMNS)}")
    bad = sorted(set(table["status"].astype(str)) - set(STATUSES))
    if bad:
        raise ValueError(f"metric table: column 'status' allows {list(STATUSES)}; found {bad}")
    nan_ok = table["status"].isin(["failed", "both_empty", NOT_ASSESSED])
    silent = table["value"].isna() & ~nan_ok
    if silent.any():
        example = table.loc[silent, ["case_id", "structure", "metric", "status"]].head(3).to_dict("records")
        raise ValueError(f"metric table: NaN values are allowed only for status failed/both_empty/{NOT_ASSESSED}; found {example}")
    return table
