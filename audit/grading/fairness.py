"""Classification fairness by group with a patient-cluster bootstrap, and acceptance criteria.

Per group (for example vendor or sex) and the binarized outcome (grade >= ``positive_from``):
selection rate ``P(pred+)``, true-positive rate, false-positive rate, and the severe-grade sensitivity.
Between groups (Fairlearn's ``method="between_groups"``, ``agg="worst_case"``):

* demographic-parity difference = max - min selection rate over groups;
* equalized-odds difference = max(max - min TPR, max - min FPR).

Intervals: one cluster bootstrap (:func:`audit.stats.bootstrap.cluster_bootstrap_means`) resamples patients,
keeping all of a drawn patient's levels, stratified by the patient's group when the group is constant within
patients (the rescaled stratified bootstrap of :mod:`audit.stats.bootstrap`, one-patient strata merged first); every rate is a ratio of summed counts, so one weight matrix serves every group, rate and difference.
"""

from __future__ import annotations

import dataclasses
import logging
import operator as op
import warnings

import numpy as np
import pandas as pd

from audit.stats.acceptance import criterion_status
from audit.stats.bootstrap import cluster_bootstrap_means, merge_small_strata, percentile_interval

logger = logging.getLogger(__name__)

__all__ = ["RATES", "RateDraws", "GradingCriterion", "group_rates", "fairness_differences", "bootstrap_rate_draws", "summarize_rate_draws",
           "bootstrap_group_rates", "evaluate_grading_criteria"]

#: rate name -> (numerator count, denominator count) of the per-patient count table.
RATES: dict[str, tuple[str, str]] = {
    "selection_rate": ("pred_pos", "n"),
    "tpr": ("tp", "pos"),
    "fpr": ("fp", "neg"),
    "severe_sensitivity": ("severe_tp", "severe_ref"),
}
_OPS = {">=": op.ge, "<=": op.le, ">": op.gt, "<": op.lt}


def _counts(paired: pd.DataFrame, positive_from: int, severe: int) -> pd.DataFrame:
    ref, pred = paired["grade_ref"].to_numpy(), paired["grade_model"].to_numpy()
    return pd.DataFrame({
        "n": 1.0, "pred_pos": (pred >= positive_from) * 1.0, "pos": (ref >= positive_from) * 1.0, "neg": (ref < positive_from) * 1.0,
        "tp": ((ref >= positive_from) & (pred >= positive_from)) * 1.0, "fp": ((ref < positive_from) & (pred >= positive_from)) * 1.0,
        "severe_ref": (ref == severe) * 1.0, "severe_tp": ((ref == severe) & (pred == severe)) * 1.0,
    }, index=paired.index)  # fmt: skip


def group_rates(paired: pd.DataFrame, group: str, *, positive_from: int, severe: int) -> pd.DataFrame:
    """Point estimates per group: ``group``, ``n_patients``, ``n_levels`` and every rate of :data:`RATES`.

    ``paired`` holds one row per graded level with ``patient_id``, ``grade_ref``, ``grade_model`` and ``group``.
    """
    counts = _counts(paired, positive_from, severe)
    counts["group"] = paired[group].astype(str).to_numpy()
    sums = counts.groupby("group", sort=True).sum()
    out = pd.DataFrame({"group": sums.index, "n_patients": paired.groupby(paired[group].astype(str))["patient_id"].nunique().reindex(sums.index).to_numpy(),
                        "n_levels": sums["n"].astype(int).to_numpy()})  # fmt: skip
    for name, (num, den) in RATES.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(sums[den] > 0, sums[num] / sums[den].where(sums[den] > 0, 1), np.nan)
    return out.reset_index(drop=True)


def fairness_differences(rates: pd.DataFrame) -> dict[str, float]:
    """Demographic-parity and equalized-odds differences (between groups, worst case) from :func:`group_rates`."""

    def spread(col: str) -> float:
        values = rates[col].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(values.max() - values.min()) if values.size >= 2 else float("nan")

    tpr, fpr = spread("tpr"), spread("fpr")
    eod = float("nan") if np.isnan(tpr) and np.isnan(fpr) else float(np.nanmax([tpr, fpr]))
    return {"demographic_parity_difference": spread("selection_rate"), "equalized_odds_difference": eod}


@dataclasses.dataclass(frozen=True)
class RateDraws:
    """Point estimates and patient-cluster bootstrap draws of every rate of every group of one grouping column.

    ``draws`` is (B x groups x rates) in the order of ``point["group"]`` and :data:`RATES`; one set of resamples
    serves the intervals, the differences between groups and the gap tests (:mod:`audit.grading.gaps`).
    """

    column: str
    point: pd.DataFrame
    draws: np.ndarray

    @property
    def groups(self) -> list[str]:
        return self.point["group"].tolist()


def bootstrap_rate_draws(
    paired: pd.DataFrame, group: str, *, positive_from: int, severe: int, n_resamples: int = 2000, seed: int = 0
) -> RateDraws:
    """Resample patients (all their levels), stratified by ``group`` when it is constant within patients."""
    point = group_rates(paired, group, positive_from=positive_from, severe=severe)
    groups = point["group"].tolist()
    counts = _counts(paired, positive_from, severe)
    counts["patient_id"] = paired["patient_id"].astype(str).to_numpy()
    counts["group"] = paired[group].astype(str).to_numpy()
    per = counts.groupby(["patient_id", "group"]).sum().unstack("group", fill_value=0.0)
    patients = per.index
    sums = np.column_stack([per[(RATES[r][0], g)].to_numpy() if (RATES[r][0], g) in per.columns else np.zeros(len(patients)) for g in groups for r in RATES])
    dens = np.column_stack([per[(RATES[r][1], g)].to_numpy() if (RATES[r][1], g) in per.columns else np.zeros(len(patients)) for g in groups for r in RATES])
    patient_groups = paired.groupby(paired["patient_id"].astype(str))[group].nunique()
    strata = None
    if (patient_groups == 1).all():
        first = paired.groupby(paired["patient_id"].astype(str))[group].first().astype(str).reindex(patients)
        strata, merged = merge_small_strata(pd.Categorical(first).codes)
        if merged:
            logger.info("%s: one-patient groups %s resampled with another stratum", group, merged)
    else:
        logger.info("%s varies within patients: the bootstrap is not stratified by it", group)
    boot = cluster_bootstrap_means(sums, dens, n_resamples=n_resamples, rng=np.random.default_rng(seed), strata=strata)
    return RateDraws(column=group, point=point, draws=boot.reshape(n_resamples, len(groups), len(RATES)))


def summarize_rate_draws(draws: RateDraws, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rates per group and the two fairness differences with percentile intervals (see :func:`bootstrap_group_rates`)."""
    point, cube, groups = draws.point, draws.draws, draws.groups
    n_resamples, k = cube.shape[0], len(RATES)
    lo, hi = percentile_interval(cube.reshape(n_resamples, -1), level)
    rows = []
    for gi, g in enumerate(groups):
        for ri, r in enumerate(RATES):
            col = gi * k + ri
            rec = point.iloc[gi]
            rows.append({"group": g, "rate": r, "estimate": float(rec[r]), "ci_low": float(lo[col]), "ci_high": float(hi[col]),
                         "n_patients": int(rec["n_patients"]), "n_levels": int(rec["n_levels"])})  # fmt: skip
    rates = pd.DataFrame(rows)
    names = list(RATES)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples (a group without positives) stay NaN
        spread = {r: np.nanmax(cube[:, :, names.index(r)], axis=1) - np.nanmin(cube[:, :, names.index(r)], axis=1) for r in ("selection_rate", "tpr", "fpr")}
    boot_diff = np.column_stack([spread["selection_rate"], np.fmax(spread["tpr"], spread["fpr"])])
    dlo, dhi = percentile_interval(boot_diff, level)
    est = fairness_differences(point)
    differences = pd.DataFrame({"difference": list(est), "estimate": list(est.values()), "ci_low": dlo, "ci_high": dhi})
    return rates, differences


def bootstrap_group_rates(
    paired: pd.DataFrame, group: str, *, positive_from: int, severe: int, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rates per group and the two fairness differences with patient-cluster percentile intervals.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        ``rates``: long, one row per group and rate (``group``, ``rate``, ``estimate``, ``ci_low``, ``ci_high``,
        ``n_patients``, ``n_levels``); ``differences``: one row per difference (``difference``, ``estimate``,
        ``ci_low``, ``ci_high``).
    """
    draws = bootstrap_rate_draws(paired, group, positive_from=positive_from, severe=severe, n_resamples=n_resamples, seed=seed)
    return summarize_rate_draws(draws, level)


@dataclasses.dataclass(frozen=True)
class GradingCriterion:
    """A pre-registered criterion on a group rate or a fairness difference.

    Examples
    --------
    >>> GradingCriterion(id="severe-sens", description="severe sensitivity, every vendor", estimate="severe_sensitivity",
    ...                  group_by="vendor", bound="ci_low", operator=">=", threshold=0.8).estimate
    'severe_sensitivity'
    """

    id: str
    description: str
    estimate: str  # a rate of RATES (judged per group) or a difference of fairness_differences
    group_by: str
    bound: str = "ci_low"  # ci_low, ci_high or estimate
    operator: str = ">="
    threshold: float = 0.8

    def __post_init__(self) -> None:
        allowed = [*RATES, "demographic_parity_difference", "equalized_odds_difference"]
        if self.estimate not in allowed:
            raise ValueError(f"estimate: allowed values are {allowed}; found {self.estimate!r}")
        if self.bound not in ("ci_low", "ci_high", "estimate"):
            raise ValueError(f"bound: allowed values are ['ci_low', 'ci_high', 'estimate']; found {self.bound!r}")
        if self.operator not in _OPS:
            raise ValueError(f"operator: allowed values are {list(_OPS)}; found {self.operator!r}")


def evaluate_grading_criteria(
    criteria: list[GradingCriterion], rates: dict[str, pd.DataFrame], differences: dict[str, pd.DataFrame], *, min_group_size: int = 10
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Judge each criterion per group (rates) or once (differences); overall status by :func:`criterion_status`.

    A group with fewer than ``min_group_size`` patients, or a non-finite bound, is inconclusive.
    """
    rows = []
    for crit in criteria:
        if crit.group_by not in rates:
            rows.append({"id": crit.id, "description": crit.description, "estimate": crit.estimate, "group_by": crit.group_by, "group": "-",
                         "bound": crit.bound, "operator": crit.operator, "threshold": crit.threshold, "value": float("nan"),
                         "status": "inconclusive", "reason": f"no {crit.group_by!r} column in the graded table"})  # fmt: skip
            continue
        if crit.estimate in RATES:
            table = rates[crit.group_by]
            items = [(r.group, getattr(r, crit.bound), r.n_patients) for r in table[table["rate"] == crit.estimate].itertuples()]
        else:
            table = differences[crit.group_by]
            rec = table[table["difference"] == crit.estimate].iloc[0]
            items = [("all groups", rec[crit.bound], min_group_size)]
        for group, value, n_patients in items:
            if n_patients < min_group_size:
                status, reason = "inconclusive", f"{n_patients} patients < min_group_size {min_group_size}"
            elif not np.isfinite(value):
                status, reason = "inconclusive", "no finite value to compare"
            else:
                ok = _OPS[crit.operator](value, crit.threshold)
                status, reason = ("pass" if ok else "fail"), f"{crit.bound} {crit.estimate} {value:.4g} {crit.operator} {crit.threshold:g} is {'true' if ok else 'false'}"
            rows.append({"id": crit.id, "description": crit.description, "estimate": crit.estimate, "group_by": crit.group_by, "group": group,
                         "bound": crit.bound, "operator": crit.operator, "threshold": crit.threshold, "value": float(value), "status": status, "reason": reason})  # fmt: skip
    table = pd.DataFrame(rows)
    return table, criterion_status(table) if rows else {}
