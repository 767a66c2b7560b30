"""Gaps between groups: versus a reference group and worst versus best, with tests, multiplicity,
equivalence (TOST) and minimum detectable differences.

Bootstrap draws of each group come from resampling that group's patients alone, so the draws of two
groups are independent and their difference is a stratified bootstrap of the gap. The worst-versus-best
gap is the range of the group means; its interval is the bootstrap distribution of the range itself
(the worst and best group re-chosen in every resample), which accounts for choosing them from the data.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from audit.stats.bootstrap import percentile_interval
from audit.stats.groups import GroupResult
from audit.stats.intervals import (
    minimum_detectable_difference,
    omnibus_test,
    test_for_metric,
    two_group_test,
    welch_tost,
)

logger = logging.getLogger(__name__)

__all__ = ["choose_reference", "axis_gaps", "adjust_pvalues", "holm", "benjamini_hochberg", "GAP_COLUMNS", "EQUIVALENCE_COLUMNS", "POWER_COLUMNS"]

GAP_COLUMNS = (
    "axis", "comparison", "group", "reference", "structure", "metric", "difference", "diff_ci_low", "diff_ci_high",
    "ratio", "ratio_ci_low", "ratio_ci_high", "test", "statistic", "p_value", "p_holm", "p_fdr_bh", "p_adjusted",
    "significant", "descriptive_only", "family",
)  # fmt: skip
EQUIVALENCE_COLUMNS = ("axis", "group", "reference", "structure", "metric", "margin", "difference", "ci_low", "ci_high", "p_tost", "equivalent", "descriptive_only")
POWER_COLUMNS = ("axis", "group", "reference", "structure", "metric", "n_patients", "sd", "mdd", "descriptive_only")


def choose_reference(groups: Sequence[GroupResult], k: int, requested: str | None) -> GroupResult | None:
    """The protocol's reference group, else the known group with the most patients in column ``k``."""
    if requested is not None:
        for g in groups:
            if g.group == requested:
                return g
        logger.warning("reference group %r not present; using the largest group", requested)
    known = [g for g in groups if g.known and g.n_patients[k] > 0]
    return max(known, key=lambda g: g.n_patients[k], default=None)  # ties: the first group in sorted order


def _ratio_ci(boot_g: np.ndarray, boot_r: np.ndarray, level: float) -> tuple[float, float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = boot_g / boot_r
    ratio = np.where(np.isfinite(ratio), ratio, np.nan)[:, None]
    lo, hi = percentile_interval(ratio, level)
    return float(lo[0]), float(hi[0])


def axis_gaps(
    axis: str,
    groups: Sequence[GroupResult],
    columns: Sequence[tuple[str, str]],
    *,
    reference: str | None,
    level: float,
    alpha: float,
    min_group_size: int,
    margins: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    signed: Sequence[str] = (),
    gap_test: str = "auto",
    n_permutations: int = 10_000,
    rng: np.random.Generator | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Gap, equivalence and power rows of one axis (p-values not yet adjusted).

    ``gap_test`` ``auto`` tests bounded metrics with Welch and distance metrics with Mann-Whitney
    (Alexander-Govern / Kruskal-Wallis across groups); ``permutation`` uses permutation tests of means for
    every metric (``n_permutations`` relabellings drawn from ``rng``; exact when fewer exist).

    For a ``signed`` metric (ideal 0, e.g. the relative volume error) worst and best are ranked by the
    absolute group mean, and the worst-versus-best difference is ``|mean_worst| - |mean_best|``.
    """
    gaps: list[dict] = []
    equivalence: list[dict] = []
    power: list[dict] = []
    for k, (structure, metric) in enumerate(columns):
        ref = choose_reference(groups, k, reference)
        if ref is None:
            continue
        test = test_for_metric(metric, gap_test)
        ref_means = ref.patient_means[:, k]
        ref_means = ref_means[np.isfinite(ref_means)]
        ref_small = ref.n_patients[k] < min_group_size
        for g in groups:
            if g is ref or g.n_patients[k] == 0:
                continue
            small = bool(g.n_patients[k] < min_group_size or ref_small)
            g_means = g.patient_means[:, k][np.isfinite(g.patient_means[:, k])]
            diff_boot = (g.boot[:, k] - ref.boot[:, k])[:, None]
            lo, hi = percentile_interval(diff_boot, level)
            stat, p = (math.nan, math.nan) if small else two_group_test(g_means, ref_means, test, rng=rng, n_permutations=n_permutations)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = float(g.estimate[k] / ref.estimate[k]) if ref.estimate[k] != 0 else math.nan
            rlo, rhi = _ratio_ci(g.boot[:, k], ref.boot[:, k], level)
            gaps.append(
                dict(axis=axis, comparison="vs_reference", group=g.group, reference=ref.group, structure=structure, metric=metric,
                     difference=float(g.estimate[k] - ref.estimate[k]), diff_ci_low=float(lo[0]), diff_ci_high=float(hi[0]),
                     ratio=ratio, ratio_ci_low=rlo, ratio_ci_high=rhi, test=test if not small else "none (descriptive only)",
                     statistic=stat, p_value=p, descriptive_only=small)
            )  # fmt: skip
            sd_g = float(np.std(g_means, ddof=1)) if g_means.size > 1 else math.nan
            sd_r = float(np.std(ref_means, ddof=1)) if ref_means.size > 1 else math.nan
            power.append(
                dict(axis=axis, group=g.group, reference=ref.group, structure=structure, metric=metric, n_patients=int(g.n_patients[k]),
                     sd=sd_g, mdd=minimum_detectable_difference(sd_g, g_means.size, sd_r, ref_means.size, alpha=alpha), descriptive_only=small)
            )  # fmt: skip
            if metric in margins:
                m = float(margins[metric])
                elo, ehi = percentile_interval(diff_boot, 1.0 - 2.0 * alpha)
                equivalent = bool(not small and np.isfinite(elo[0]) and -m < elo[0] and ehi[0] < m)
                equivalence.append(
                    dict(axis=axis, group=g.group, reference=ref.group, structure=structure, metric=metric, margin=m,
                         difference=float(g.estimate[k] - ref.estimate[k]), ci_low=float(elo[0]), ci_high=float(ehi[0]),
                         p_tost=math.nan if small else welch_tost(g_means, ref_means, m), equivalent=equivalent, descriptive_only=small)
                )  # fmt: skip
        # worst versus best among known groups large enough to test
        eligible = [g for g in groups if g.known and g.n_patients[k] >= min_group_size]
        if len(eligible) >= 2:
            gaps.append(_worst_vs_best(axis, eligible, k, structure, metric, test, level=level,
                                       higher=higher_is_better.get(metric, True), signed=metric in signed,
                                       rng=rng, n_permutations=n_permutations))  # fmt: skip
    return gaps, equivalence, power


def _worst_vs_best(axis: str, eligible: Sequence[GroupResult], k: int, structure: str, metric: str, test: str, *,
                   level: float, higher: bool, signed: bool, rng: np.random.Generator | None = None, n_permutations: int = 10_000) -> dict:
    """The worst-versus-best row: the range of group means with the bootstrap distribution of the range.

    Worst and best are re-chosen in every resample, so the interval accounts for choosing them from the
    data. ``difference`` is worst - best (negative when higher is better); ``ratio`` is worst / best.
    """
    means = np.array([g.estimate[k] for g in eligible])
    boot = np.column_stack([g.boot[:, k] for g in eligible])
    if signed:
        means, boot = np.abs(means), np.abs(boot)
        higher = False  # a larger |signed error| is worse
    worst, best = (int(np.argmin(means)), int(np.argmax(means))) if higher else (int(np.argmax(means)), int(np.argmin(means)))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample rows give NaN, ignored by the quantiles
        hi_b, lo_b = np.nanmax(boot, axis=1), np.nanmin(boot, axis=1)
        worst_b, best_b = (lo_b, hi_b) if higher else (hi_b, lo_b)
        diff_b = (worst_b - best_b)[:, None]
        ratio_b = np.where(best_b != 0, worst_b / np.where(best_b != 0, best_b, 1.0), np.nan)[:, None]
    dlo, dhi = percentile_interval(diff_b, level)
    rlo, rhi = percentile_interval(ratio_b, level)
    name, stat, p = omnibus_test([g.patient_means[:, k] for g in eligible], test, rng=rng, n_permutations=n_permutations)
    return dict(axis=axis, comparison="worst_vs_best", group=eligible[worst].group, reference=eligible[best].group, structure=structure,
                metric=metric, difference=float(means[worst] - means[best]), diff_ci_low=float(dlo[0]), diff_ci_high=float(dhi[0]),
                ratio=float(means[worst] / means[best]) if means[best] else math.nan, ratio_ci_low=float(rlo[0]), ratio_ci_high=float(rhi[0]),
                test=name, statistic=stat, p_value=p, descriptive_only=False)  # fmt: skip


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values: sorted ``p_(i) * (m - i)``, running maximum, capped at 1.

    Equal to ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]`` (tested), computed here
    because statsmodels' Holm branch runs a full ``gc.collect()`` on every call, which costs tenths of a
    second in a process holding a large heap (torch, a loaded model) and dominated repeated analyses.
    """
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * np.arange(p.size, 0, -1))
    out = np.empty_like(p)
    out[order] = np.minimum(stepped, 1.0)
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``multipletests(method="fdr_bh")``)."""
    p = np.asarray(p, dtype=float)
    return multipletests(p, method="fdr_bh")[1] if p.size else p.copy()


def adjust_pvalues(gaps: pd.DataFrame, method: str, alpha: float) -> pd.DataFrame:
    """Holm and Benjamini-Hochberg adjustment (statsmodels ``multipletests``) over the whole family of tests in ``gaps``.

    The family is every test of the run that has a p-value: each axis x group x structure x metric
    versus its reference, and each omnibus worst-versus-best test. Descriptive-only groups are not tested.
    """
    out = gaps.copy()
    for col in ("p_holm", "p_fdr_bh", "p_adjusted"):
        out[col] = np.nan
    out["significant"] = False
    tested = out["p_value"].notna().to_numpy()
    if tested.any():
        p = out.loc[tested, "p_value"].to_numpy(dtype=float)
        out.loc[tested, "p_holm"] = holm(p)
        out.loc[tested, "p_fdr_bh"] = benjamini_hochberg(p)
        if method == "none":
            adjusted = p
        elif method == "bonferroni":
            adjusted = multipletests(p, method="bonferroni")[1]
        else:
            adjusted = out.loc[tested, "p_holm" if method == "holm" else "p_fdr_bh"].to_numpy(dtype=float)
        out.loc[tested, "p_adjusted"] = adjusted
        out.loc[tested, "significant"] = adjusted < alpha
    out["significant"] = out["significant"].astype(bool)
    return out.reindex(columns=list(GAP_COLUMNS))
