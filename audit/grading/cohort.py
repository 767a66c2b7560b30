"""Who was graded: case metadata (site, vendor, field strength, age, sex, ...) and the RSNA series per study.

* :func:`attach_metadata` joins a metadata table (one row per study or case) onto the tidy grading table. The
  table is read and harmonized by :func:`audit.tables_input.metadata_manifest`, the reader of segmentation
  metadata tables (the same vocabulary: :mod:`audit.harmonize.metadata`; repeated ids and unparseable ages are
  per-case failures; optional pseudonymization), and the age band comes from :func:`audit.stats.add_age_band`.
  A graded case without a metadata row keeps every metadata column ``Unknown`` (counted, logged); a case whose
  metadata row failed is a recorded failure and its levels are not scored.
* :func:`read_rsna_series` reads the RSNA 2024 ``train_series_descriptions.csv`` (``study_id``, ``series_id``,
  ``series_description``) into the series available per study, and :func:`missing_series` flags each graded
  (study, condition) whose study lacks the series the condition is graded on (canal: ``Sagittal T2/STIR``,
  foramina: ``Sagittal T1``, subarticular recesses: ``Axial T2``). Flagged levels are still scored; the flags
  are warnings the results and the report count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from audit.errors import SiteDataError
from audit.records import DEFAULT_AGE_BAND_EDGES, METADATA_COLUMNS, UNKNOWN, CaseFailure
from audit.stats.groups import add_age_band
from audit.tables_input.spec import MetadataSpec, MetricInputError

logger = logging.getLogger(__name__)

__all__ = ["RSNA_SERIES", "CONDITION_SERIES", "COHORT_COLUMNS", "attach_metadata", "read_rsna_series", "missing_series", "series_summary"]

#: RSNA 2024 series descriptions.
RSNA_SERIES: tuple[str, ...] = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")
#: The series each RSNA condition is graded on.
CONDITION_SERIES: dict[str, str] = {
    "spinal_canal_stenosis": "Sagittal T2/STIR",
    "neural_foraminal_narrowing": "Sagittal T1",
    "subarticular_stenosis": "Axial T2",
}
#: Case-level columns a metadata table adds to the grading table (Table 1 axes and breakdowns).
COHORT_COLUMNS: tuple[str, ...] = ("site", *METADATA_COLUMNS, "age_band")


def attach_metadata(
    table: pd.DataFrame, spec: MetadataSpec, *, age_bands: Sequence[float] = DEFAULT_AGE_BAND_EDGES, where: str = "input.metadata"
) -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Add the harmonized metadata of each case (``site``, ``vendor``, ``field_strength``, ``age_years``, ``sex``, ...).

    ``spec.columns`` maps canonical keys (``case_id``, ``patient_id``, ``vendor``, ``field_strength``, ``age``,
    ``sex``, ``race``, ``ethnicity``, ...) to the table's columns; ``case_id`` defaults to ``study_id`` when the
    table has one. A ``patient_id`` column replaces the grading table's patient (RSNA: the study).

    Returns
    -------
    (pandas.DataFrame, list of CaseFailure)
        The grading table with :data:`COHORT_COLUMNS` (and ``age_redacted``), cases whose metadata failed left
        out, and one failure per such case.
    """
    from audit.tables_input import metadata_manifest
    from audit.tables_input.readers import read_any_table

    columns = dict(spec.columns)
    if "case_id" not in columns and "case_id" not in read_any_table(spec.path, what=f"{where}.path").columns:
        columns["case_id"] = "study_id"
    try:
        manifest, failures = metadata_manifest(MetadataSpec(path=spec.path, columns=columns, site=spec.site, pseudonymize=spec.pseudonymize), where=where)
    except MetricInputError as exc:
        raise SiteDataError(str(exc)) from None
    manifest = add_age_band(manifest, age_bands)
    local = manifest["case_id"].astype(str).str.split("/", n=1).str[1]
    meta = manifest.assign(case_id=local).set_index("case_id")
    keep = [c for c in (*COHORT_COLUMNS, "age_redacted") if c in meta.columns]
    failed = {f.case_id.split("/", 1)[-1]: f for f in failures}
    out = table[~table["case_id"].isin(list(failed))].drop(columns=[c for c in keep if c in table.columns]).copy()
    if failed:
        logger.warning("%s: %d cases with failed metadata rows are not scored (recorded as failures)", where, len(failed))
    has_patient = "patient_id" in columns
    extra_cols = meta[keep + (["patient_id"] if has_patient else [])].rename(columns={"patient_id": "patient_id_metadata"})
    joined = out.merge(extra_cols, left_on="case_id", right_index=True, how="left")
    unmatched = joined["site"].isna()
    if unmatched.any():
        logger.warning("%s: %d graded cases have no metadata row; their metadata is %s", where, joined.loc[unmatched, "case_id"].nunique(), UNKNOWN)
    for col in keep:  # numbers (age_years, field_strength_t) stay NaN, the rest is Unknown (age_redacted False)
        if col == "age_redacted":
            joined[col] = joined[col].where(joined[col].notna(), False).astype(bool)
        elif not pd.api.types.is_numeric_dtype(joined[col]):
            joined[col] = joined[col].astype(object).where(joined[col].notna(), UNKNOWN)
    if has_patient:
        joined["patient_id"] = joined["patient_id_metadata"].where(joined["patient_id_metadata"].notna(), joined["patient_id"]).astype(str)
        joined = joined.drop(columns="patient_id_metadata")
    extra = sorted(set(manifest["case_id"].str.split("/", n=1).str[1]) - set(table["case_id"]))
    if extra:
        logger.info("%s: %d metadata rows have no graded case", where, len(extra))
    return joined.reset_index(drop=True), list(failures)


def read_rsna_series(source: Path | pd.DataFrame) -> tuple[pd.DataFrame, list[CaseFailure]]:
    """The series available per study from ``train_series_descriptions.csv``.

    Returns
    -------
    (pandas.DataFrame, list of CaseFailure)
        One row per study: ``case_id`` and one boolean column per :data:`RSNA_SERIES` description; and one
        failure (type ``UnknownSeriesDescription``, the series ignored) per row with another description.

    Examples
    --------
    >>> s = pd.DataFrame({"study_id": [7, 7], "series_id": [1, 2], "series_description": ["Sagittal T1", "Axial T2"]})
    >>> read_rsna_series(s)[0].values.tolist()
    [['7', True, False, True]]
    """
    name = "RSNA series descriptions" if isinstance(source, pd.DataFrame) else str(source)
    raw = source.copy() if isinstance(source, pd.DataFrame) else pd.read_csv(source, dtype=str, keep_default_na=False)
    required = ("study_id", "series_id", "series_description")
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise SiteDataError(f"{name}: missing columns {missing}; required {list(required)}; found {list(raw.columns)}")
    raw["case_id"] = raw["study_id"].astype(str).str.strip()
    raw["series_description"] = raw["series_description"].astype(str).str.strip()
    known = raw["series_description"].isin(RSNA_SERIES)
    failures = [
        CaseFailure(case_id=r.case_id, stage="grading", error_type="UnknownSeriesDescription",
                    error=f"series_description: allowed values are {list(RSNA_SERIES)}; found {r.series_description!r} (series ignored)")  # fmt: skip
        for r in raw[~known].itertuples()
    ]
    present = pd.crosstab(raw.loc[known, "case_id"], raw.loc[known, "series_description"]).reindex(columns=list(RSNA_SERIES), fill_value=0) > 0
    studies = pd.Index(sorted(raw["case_id"].unique()), name="case_id")
    return present.reindex(studies, fill_value=False).reset_index().rename_axis(columns=None), failures


def missing_series(table: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    """Graded (case, condition) pairs whose study lacks the condition's series; a study absent from ``series`` lacks all.

    Returns
    -------
    pandas.DataFrame
        ``case_id``, ``site``, ``condition``, ``series``, ``n_levels`` (graded levels of that pair; still scored).

    Examples
    --------
    >>> s = pd.DataFrame({"case_id": ["7"], "Sagittal T1": [True], "Sagittal T2/STIR": [False], "Axial T2": [True]})
    >>> t = pd.DataFrame({"case_id": ["7", "7", "8"], "condition": ["spinal_canal_stenosis", "subarticular_stenosis", "subarticular_stenosis"]})
    >>> missing_series(t, s)[["case_id", "condition", "series", "n_levels"]].values.tolist()
    [['7', 'spinal_canal_stenosis', 'Sagittal T2/STIR', 1], ['8', 'subarticular_stenosis', 'Axial T2', 1]]
    """
    columns = ["case_id", "site", "condition", "series", "n_levels"]
    graded = table[table["condition"].isin(list(CONDITION_SERIES))]
    if graded.empty:
        return pd.DataFrame(columns=columns)
    site = graded["site"] if "site" in graded.columns else pd.Series(UNKNOWN, index=graded.index)
    pairs = graded.assign(site=site.astype(str)).groupby(["case_id", "site", "condition"], sort=True).size().rename("n_levels").reset_index()
    pairs["series"] = pairs["condition"].map(CONDITION_SERIES)
    available = series.set_index("case_id")
    has = [bool(available.at[c, s]) if c in available.index else False for c, s in zip(pairs["case_id"], pairs["series"])]
    return pairs[[not h for h in has]][columns].reset_index(drop=True)


def series_summary(series: pd.DataFrame, flags: pd.DataFrame) -> dict[str, object]:
    """Counts for the results document (no case identifiers): studies per description and missing-series flags."""
    return {
        "n_studies": int(len(series)),
        "studies_with": {s: int(series[s].sum()) for s in RSNA_SERIES},
        "missing": {"count": int(len(flags)), "n_levels": int(flags["n_levels"].sum()) if len(flags) else 0,
                    "by_condition": {str(k): int(v) for k, v in flags.groupby("condition").size().items()},
                    "by_site": {str(k): int(v) for k, v in flags.groupby("site").size().items()}},
        "policy": "levels of a study without the condition's series are scored and counted here",
        "condition_series": dict(CONDITION_SERIES),
    }  # fmt: skip

