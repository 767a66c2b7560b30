"""Subgroup axes and per-group estimates with cluster-bootstrap intervals.

The analysis table (metric table joined with the manifest) is pivoted once into a case x column
matrix, one column per (structure, metric). Values count in estimates only for statuses ``ok``,
``missed`` and ``false_positive`` and only when finite; ``both_empty``, ``failed`` and non-finite values
are counted per group instead (``n_both_empty``, ``n_failed``, ``n_nonfinite``); ``not_assessed`` rows (a structure the
case's site does not annotate) belong to no count and no estimate of that structure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from audit.records import EVALUABLE_STATUSES, UNKNOWN, age_band_labels, age_bands
from audit.stats.bootstrap import (
    bca_interval,
    cluster_bootstrap_means,
    jackknife_means,
    merge_small_strata,
    percentile_interval,
)
from audit.stats.intervals import proportion_interval

logger = logging.getLogger(__name__)

__all__ = ["add_age_band", "age_band_labels", "Prepared", "prepare", "GroupResult", "group_result", "failure_count", "axis_unknown", "axis_labels", "ESTIMATE_COLUMNS"]

EVALUABLE = EVALUABLE_STATUSES
INTERSECTION_SEP = " x "

ESTIMATE_COLUMNS = (
    "axis", "group", "structure", "metric", "n_cases", "n_patients", "n_failed", "n_both_empty", "n_nonfinite",
    "mean", "median", "sd", "ci_low", "ci_high", "ci_method", "failure_rate", "failure_ci_low", "failure_ci_high",
    "mdd", "descriptive_only", "is_reference", "population",
)  # fmt: skip


def add_age_band(df: pd.DataFrame, edges: Sequence[float], *, column: str = "age_years") -> pd.DataFrame:
    """Return a copy of ``df`` with an ``age_band`` column by :func:`audit.records.age_bands` (the one rule).

    Parameters
    ----------
    df : pandas.DataFrame
        Any table with an age column (a missing column means every age is unknown).
    edges : sequence of float
        At least two strictly increasing edges in years, e.g. ``[18, 40, 60, 75, 120]`` giving
        ``18-39``, ``40-59``, ``60-74`` and ``75+`` (the last band is open-ended in its label).
    column : str
        The age column (years).

    Returns
    -------
    pandas.DataFrame
        ``df`` plus ``age_band``; a missing, non-numeric or out-of-range age (below the first edge or at/above
        the last one) is ``Unknown``, so the row stays in the table and is counted in its own group.
    """
    ages = df[column] if column in df else pd.Series(np.nan, index=df.index)
    band = age_bands(ages, edges)
    numeric = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=float)
    out_of_range = int((np.isfinite(numeric) & (band == UNKNOWN)).sum())
    if out_of_range:
        logger.info("age_band: %d age(s) outside [%g, %g) set to %s", out_of_range, float(edges[0]), float(edges[-1]), UNKNOWN)
    out = df.copy()
    out["age_band"] = pd.Series(band, index=df.index, dtype=object)
    return out


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The analysis table pivoted to one row per case and one column per (structure, metric)."""

    columns: tuple[tuple[str, str], ...]
    cases: pd.DataFrame  # one row per case: patient_id, site and every axis column
    values: np.ndarray  # n x K, NaN where not evaluable
    failed: np.ndarray  # n x K bool
    both_empty: np.ndarray  # n x K bool
    nonfinite: np.ndarray  # n x K bool (evaluable status but inf value)
    evaluable: np.ndarray  # n x K raw values of evaluable rows, inf kept (for failure rates); NaN elsewhere
    n_without_patient: int = 0  # cases whose missing patient_id was replaced by their case_id


def prepare(table: pd.DataFrame, *, structures: Sequence[str], metrics: Sequence[str]) -> Prepared:
    """Pivot the long analysis table (metric table joined with the manifest)."""
    required = {"case_id", "structure", "metric", "value", "status", "patient_id", "site"}
    missing = sorted(required - set(table.columns))
    if missing:
        raise ValueError(f"analysis table: missing columns {missing}")
    sub = table[table["structure"].isin(structures) & table["metric"].isin(metrics)]
    columns = tuple((s, m) for s in structures for m in metrics)
    cases = table.drop_duplicates("case_id").set_index("case_id")
    n_missing = int(cases["patient_id"].isna().sum())
    if n_missing:  # a case without a patient id is its own cluster, never pooled with others
        cases["patient_id"] = cases["patient_id"].astype(object).where(cases["patient_id"].notna(), "case:" + cases.index.astype(str))
    cases = cases.drop(columns=[c for c in ("structure", "metric", "value", "status", "error", "reference_volume_ml", "predicted_volume_ml") if c in cases])
    index = pd.MultiIndex.from_tuples(columns, names=["structure", "metric"])
    value = sub.pivot_table(index="case_id", columns=["structure", "metric"], values="value", aggfunc="first", dropna=False)
    value = value.reindex(index=cases.index, columns=index)
    status = sub.pivot(index="case_id", columns=["structure", "metric"], values="status").reindex(index=cases.index, columns=index)
    v = value.to_numpy(dtype=float)
    st = status.to_numpy(dtype=object)
    evaluable_status = np.isin(st, EVALUABLE)
    finite = np.isfinite(v)
    return Prepared(
        columns=columns,
        cases=cases,
        values=np.where(evaluable_status & finite, v, np.nan),
        failed=(st == "failed") | pd.isna(st),
        both_empty=st == "both_empty",
        nonfinite=evaluable_status & ~finite & ~np.isnan(v),
        evaluable=np.where(evaluable_status, v, np.nan),
        n_without_patient=n_missing,
    )


def axis_labels(cases: pd.DataFrame, axis: str | Sequence[str]) -> pd.Series:
    """Group label of every case on an axis (a column, or an intersection of columns)."""
    cols = [axis] if isinstance(axis, str) else list(axis)
    for c in cols:
        if c not in cases.columns:
            raise ValueError(f"subgroups: column {c!r} is not in the manifest; available: {sorted(cases.columns)}")
    parts = [cases[c].astype(object).where(cases[c].notna(), UNKNOWN).astype(str) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = out + INTERSECTION_SEP + p
    return out


def axis_unknown(cases: pd.DataFrame, axis: str | Sequence[str]) -> np.ndarray:
    """True for cases whose value in any column of the axis is missing or ``Unknown``."""
    cols = [axis] if isinstance(axis, str) else list(axis)
    out = np.zeros(len(cases), dtype=bool)
    for c in cols:
        out |= (cases[c].isna() | (cases[c].astype(object).astype(str) == UNKNOWN)).to_numpy()
    return out


def failure_count(values: np.ndarray, threshold: float, *, higher: bool, signed: bool = False) -> int:
    """Number of values beyond ``threshold``: below it when higher is better, above it otherwise, and
    ``|value| > threshold`` for a signed metric whose ideal is 0."""
    values = np.asarray(values, dtype=float)
    if signed:
        return int(np.sum(np.abs(values) > threshold))
    return int(np.sum(values < threshold) if higher else np.sum(values > threshold))


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """Everything later stages need about one group: per-column estimates, bootstrap draws, patient means."""

    axis: str
    group: str
    estimate: np.ndarray  # K
    boot: np.ndarray  # B x K
    patient_means: np.ndarray  # P x K (NaN for patients without a value in a column)
    n_cases: np.ndarray
    n_patients: np.ndarray
    table: pd.DataFrame  # estimate rows (ESTIMATE_COLUMNS minus mdd/is_reference, filled later)
    #: False when the group label is, or contains (intersections), ``Unknown``: never a reference, never worst/best.
    known: bool = True
    #: Strata (e.g. sites of the overall estimate) with fewer than 2 patients, merged for the stratified bootstrap.
    merged_strata: tuple[str, ...] = ()
    #: Site of each patient (P,), aligned with ``patient_means``: the unit of site-level comparisons.
    patient_sites: np.ndarray | None = None


def group_result(
    prepared: Prepared,
    mask: np.ndarray,
    *,
    axis: str,
    group: str,
    level: float,
    method: str,
    n_resamples: int,
    rng: np.random.Generator,
    min_group_size: int,
    failure_thresholds: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    strata: pd.Series | None = None,
    signed: Sequence[str] = (),
    failure_interval: str = "wilson",
) -> GroupResult:
    """Estimates, intervals and bootstrap draws for the cases selected by ``mask``.

    The failure rate counts every evaluable case, infinite values included (an infinite error is beyond
    any threshold); for a ``signed`` metric (ideal 0) a failure is ``|value| > threshold``. Its interval is
    ``failure_interval`` (``wilson`` or ``clopper_pearson``, see :func:`audit.stats.intervals.proportion_interval`).
    """
    values = prepared.values[mask]
    patients = prepared.cases["patient_id"].to_numpy()[mask]
    codes, uniques = pd.factorize(patients)
    n_pat = len(uniques)
    patient_sites = pd.Series(prepared.cases["site"].astype(str).to_numpy()[mask]).groupby(codes).first().to_numpy()
    has = ~np.isnan(values)
    sums = np.zeros((n_pat, values.shape[1]))
    counts = np.zeros_like(sums)
    np.add.at(sums, codes, np.where(has, values, 0.0))
    np.add.at(counts, codes, has.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = sums.sum(axis=0) / counts.sum(axis=0)
        patient_means = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan)
    stratum_codes = None
    merged: tuple[str, ...] = ()
    if strata is not None:
        per_patient = pd.Series(strata.to_numpy()[mask]).groupby(codes).first()
        stratum_codes, stratum_names = pd.factorize(per_patient.to_numpy())
        stratum_codes, small = merge_small_strata(stratum_codes)
        merged = tuple(str(stratum_names[i]) for i in small)
    if n_pat:
        boot = cluster_bootstrap_means(sums, counts, n_resamples=n_resamples, rng=rng, strata=stratum_codes)
    else:
        boot = np.full((n_resamples, values.shape[1]), np.nan)
    if method == "bca" and n_pat > 2:
        lo, hi = bca_interval(boot, estimate, jackknife_means(sums, counts), level)
    else:
        lo, hi = percentile_interval(boot, level)
    n_cases = counts.sum(axis=0).astype(int)
    n_patients = (counts > 0).sum(axis=0).astype(int)
    rows = []
    for k, (structure, metric) in enumerate(prepared.columns):
        col = values[:, k][has[:, k]]
        fr, flo, fhi = (math.nan, math.nan, math.nan)
        judged = prepared.evaluable[mask, k]
        judged = judged[~np.isnan(judged)]
        if metric in failure_thresholds and judged.size:
            fails = failure_count(judged, float(failure_thresholds[metric]), higher=higher_is_better.get(metric, True), signed=metric in signed)
            fr = fails / judged.size
            flo, fhi = proportion_interval(fails, judged.size, level, method=failure_interval)
        rows.append(
            {
                "axis": axis,
                "group": group,
                "structure": structure,
                "metric": metric,
                "n_cases": int(n_cases[k]),
                "n_patients": int(n_patients[k]),
                "n_failed": int(prepared.failed[mask, k].sum()),
                "n_both_empty": int(prepared.both_empty[mask, k].sum()),
                "n_nonfinite": int(prepared.nonfinite[mask, k].sum()),
                "mean": float(estimate[k]),
                "median": float(np.median(col)) if col.size else math.nan,
                "sd": float(np.std(col, ddof=1)) if col.size > 1 else math.nan,
                # one patient: every resample is that patient, a zero-width "interval" that says nothing
                "ci_low": float(lo[k]) if n_patients[k] >= 2 else math.nan,
                "ci_high": float(hi[k]) if n_patients[k] >= 2 else math.nan,
                "ci_method": f"cluster bootstrap ({'BCa' if method == 'bca' and n_pat > 2 else 'percentile'}, {n_resamples} resamples, patients)",
                "failure_rate": fr,
                "failure_ci_low": flo,
                "failure_ci_high": fhi,
                "descriptive_only": bool(n_patients[k] < min_group_size),
            }
        )
    return GroupResult(axis, group, estimate, boot, patient_means, n_cases, n_patients, pd.DataFrame(rows), merged_strata=merged, patient_sites=patient_sites)
