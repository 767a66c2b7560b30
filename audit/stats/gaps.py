"""Gaps between groups: versus a reference group and worst versus best, with tests, multiplicity,
equivalence (TOST) and minimum detectable differences.

Bootstrap draws of each group come from resampling that group's patients alone, so the draws of two
groups are independent and their difference is a stratified bootstrap of the gap. The worst-versus-best
gap is the difference of the data-chosen worst and best groups with a simultaneous interval over all pairs
of groups (max-T, :mod:`audit.stats.maxt`), so choosing the pair from the data does not break its coverage.
Axes whose values are properties of sites are compared with the site as the unit (:mod:`audit.stats.sitelevel`).
Every interval here is about the sampled sites (``population: these sites``); for a new site see
:mod:`audit.stats.meta`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from audit.stats.bootstrap import percentile_interval
from audit.stats.groups import GroupResult
from audit.stats.intervals import (
    minimum_detectable_difference,
    test_for_metric,
    two_group_test,
    welch_tost,
)
from audit.stats.maxt import largest_gap
from audit.stats.sitelevel import (
    CONFOUNDED,
    MIN_SITES_PER_LEVEL,
    bonferroni_largest_gap,
    group_site_means,
    welch_site_gap,
)

logger = logging.getLogger(__name__)

__all__ = ["choose_reference", "axis_gaps", "adjust_pvalues", "holm", "benjamini_hochberg", "GAP_COLUMNS", "EQUIVALENCE_COLUMNS", "POWER_COLUMNS",
           "TESTED", "NOT_TESTED", "THESE_SITES"]

GAP_COLUMNS = (
    "axis", "comparison", "group", "reference", "structure", "metric", "difference", "diff_ci_low", "diff_ci_high",
    "ratio", "ratio_ci_low", "ratio_ci_high", "test", "statistic", "p_value", "p_holm", "p_fdr_bh", "p_adjusted",
    "significant", "descriptive_only", "status", "unit", "n_sites_group", "n_sites_reference", "population", "family",
)  # fmt: skip
EQUIVALENCE_COLUMNS = ("axis", "group", "reference", "structure", "metric", "margin", "difference", "ci_low", "ci_high", "p_tost", "equivalent",
                       "descriptive_only", "status", "unit", "population")  # fmt: skip
POWER_COLUMNS = ("axis", "group", "reference", "structure", "metric", "n_patients", "sd", "mdd", "descriptive_only", "unit")

#: Status of a comparison that was made, and of one that was not (a group below ``min_group_size``).
TESTED = "tested"
NOT_TESTED = "not tested"
#: The population every interval of the gap and estimate tables is about.
THESE_SITES = "these sites"


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


def _site_values(g: GroupResult, k: int) -> np.ndarray:
    """One value per site of the group: the mean of its patients' means (site-level axes)."""
    if g.patient_sites is None:
        raise ValueError(f"group {g.group!r}: site-level comparison needs the patients' sites")
    return np.array(list(group_site_means(g.patient_means[:, k], g.patient_sites).values()), dtype=float)


def _untested_status(small: bool) -> str:
    """Status of a comparison that is not made: a group below min_group_size, else a level confounded with its site."""
    return f"{NOT_TESTED} (fewer than min_group_size patients)" if small else CONFOUNDED


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
    site_level: bool = False,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Gap, equivalence and power rows of one axis (p-values not yet adjusted).

    Patient-level axes (``site_level=False``): ``gap_test`` ``auto`` tests bounded metrics with Welch and
    distance metrics with Mann-Whitney on patient means; ``permutation`` uses permutation tests of means for
    every metric (``n_permutations`` relabellings drawn from ``rng``; exact when fewer exist). Intervals are
    differences of the groups' independent cluster-bootstrap draws.

    Site-level axes (``site_level=True``, :mod:`audit.stats.sitelevel`): the unit is the site; Welch on site
    means and its interval, and ``confounded with site`` (no interval, no p-value) when a level has fewer than
    two sites.

    A group (or reference) with fewer than ``min_group_size`` patients is ``not tested``: no interval, no
    p-value, no equivalence verdict. Worst versus best uses simultaneous intervals over all pairs
    (:mod:`audit.stats.maxt` for patient-level axes, Bonferroni-Welch on site means for site-level axes).

    For a ``signed`` metric (ideal 0, e.g. the relative volume error) worst and best are ranked by the
    absolute group mean, and the worst-versus-best difference is ``|mean_worst| - |mean_best|``.
    """
    gaps: list[dict] = []
    equivalence: list[dict] = []
    power: list[dict] = []
    unit = "site" if site_level else "patient"
    for k, (structure, metric) in enumerate(columns):
        ref = choose_reference(groups, k, reference)
        if ref is None:
            continue
        test = test_for_metric(metric, gap_test)
        ref_means = ref.patient_means[:, k]
        ref_means = ref_means[np.isfinite(ref_means)]
        ref_small = ref.n_patients[k] < min_group_size
        ref_sites = _site_values(ref, k) if site_level else None
        for g in groups:
            if g is ref or g.n_patients[k] == 0:
                continue
            small = bool(g.n_patients[k] < min_group_size or ref_small)
            g_means = g.patient_means[:, k][np.isfinite(g.patient_means[:, k])]
            base = dict(axis=axis, group=g.group, reference=ref.group, structure=structure, metric=metric)
            if site_level:
                row, eq_row, pw_row = _site_level_rows(base, g, k, ref_sites, small=small, level=level, alpha=alpha, margin=margins.get(metric))
                gaps.append(row)
                power.append(pw_row)
                if eq_row is not None:
                    equivalence.append(eq_row)
                continue
            diff_boot = (g.boot[:, k] - ref.boot[:, k])[:, None]
            difference = float(g.estimate[k] - ref.estimate[k])
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = float(g.estimate[k] / ref.estimate[k]) if ref.estimate[k] != 0 else math.nan
            if small:
                lo, hi, rlo, rhi, stat, p = (math.nan,) * 6
            else:
                (lo,), (hi,) = percentile_interval(diff_boot, level)
                rlo, rhi = _ratio_ci(g.boot[:, k], ref.boot[:, k], level)
                stat, p = two_group_test(g_means, ref_means, test, rng=rng, n_permutations=n_permutations)
            gaps.append(
                dict(**base, comparison="vs_reference", difference=difference, diff_ci_low=float(lo), diff_ci_high=float(hi),
                     ratio=ratio, ratio_ci_low=rlo, ratio_ci_high=rhi, test=test if not small else _untested_status(True),
                     statistic=stat, p_value=p, descriptive_only=small, status=_untested_status(True) if small else TESTED, unit=unit,
                     n_sites_group=_n_sites(g, k), n_sites_reference=_n_sites(ref, k), population=THESE_SITES)
            )  # fmt: skip
            sd_g = float(np.std(g_means, ddof=1)) if g_means.size > 1 else math.nan
            sd_r = float(np.std(ref_means, ddof=1)) if ref_means.size > 1 else math.nan
            power.append(
                dict(**base, n_patients=int(g.n_patients[k]), sd=sd_g, descriptive_only=small, unit=unit,
                     mdd=minimum_detectable_difference(sd_g, g_means.size, sd_r, ref_means.size, alpha=alpha))
            )  # fmt: skip
            if metric in margins:
                m = float(margins[metric])
                if small:
                    elo, ehi, p_tost = (math.nan,) * 3
                else:
                    (elo,), (ehi,) = percentile_interval(diff_boot, 1.0 - 2.0 * alpha)
                    p_tost = welch_tost(g_means, ref_means, m)
                equivalent = bool(not small and np.isfinite(elo) and -m < elo and ehi < m)
                equivalence.append(
                    dict(**base, margin=m, difference=difference, ci_low=float(elo), ci_high=float(ehi), p_tost=p_tost, equivalent=equivalent,
                         descriptive_only=small, status=_untested_status(True) if small else TESTED, unit=unit, population=THESE_SITES)
                )  # fmt: skip
        # worst versus best among known groups large enough to test (and, site-level, with at least two sites)
        eligible = [g for g in groups if g.known and g.n_patients[k] >= min_group_size]
        if site_level:
            eligible = [g for g in eligible if _n_sites(g, k) >= MIN_SITES_PER_LEVEL]
        if len(eligible) >= 2:
            gaps.append(_worst_vs_best(axis, eligible, k, structure, metric, level=level, higher=higher_is_better.get(metric, True),
                                       signed=metric in signed, site_level=site_level))  # fmt: skip
    return gaps, equivalence, power


def _n_sites(g: GroupResult, k: int) -> int:
    if g.patient_sites is None:
        return 0
    finite = np.isfinite(g.patient_means[:, k])
    return int(pd.unique(g.patient_sites[finite]).size)  # hashing, not sorting: ~60,000 patient sites per call at 100k cases


def _site_level_rows(base: dict, g: GroupResult, k: int, ref_sites: np.ndarray, *, small: bool, level: float, alpha: float,
                     margin: float | None) -> tuple[dict, dict | None, dict]:  # fmt: skip
    """Gap, equivalence and power rows of one level of a site-level axis (unit: site)."""
    g_sites = _site_values(g, k)
    confounded = min(g_sites.size, ref_sites.size) < MIN_SITES_PER_LEVEL
    diff, lo, hi, stat, p = welch_site_gap(g_sites, ref_sites, level)
    untested = small or confounded
    status = _untested_status(small) if untested else TESTED
    if untested:
        lo = hi = stat = p = math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = float(np.mean(g_sites) / np.mean(ref_sites)) if g_sites.size and ref_sites.size and np.mean(ref_sites) != 0 else math.nan
    row = dict(**base, comparison="vs_reference", difference=diff, diff_ci_low=lo, diff_ci_high=hi, ratio=ratio, ratio_ci_low=math.nan,
               ratio_ci_high=math.nan, test=status if untested else "welch (site means)", statistic=stat, p_value=p, descriptive_only=small,
               status=status, unit="site", n_sites_group=int(g_sites.size), n_sites_reference=int(ref_sites.size), population=THESE_SITES)  # fmt: skip
    sd_g = float(np.std(g_sites, ddof=1)) if g_sites.size > 1 else math.nan
    sd_r = float(np.std(ref_sites, ddof=1)) if ref_sites.size > 1 else math.nan
    power = dict(**base, n_patients=int(g.n_patients[k]), sd=sd_g, descriptive_only=small, unit="site",
                 mdd=minimum_detectable_difference(sd_g, g_sites.size, sd_r, ref_sites.size, alpha=alpha))  # fmt: skip
    equivalence = None
    if margin is not None:
        m = float(margin)
        if untested:
            elo = ehi = p_tost = math.nan
        else:
            _, elo, ehi, _, _ = welch_site_gap(g_sites, ref_sites, 1.0 - 2.0 * alpha)
            p_tost = welch_tost(g_sites, ref_sites, m)
        equivalence = dict(**base, margin=m, difference=diff, ci_low=elo, ci_high=ehi, p_tost=p_tost,
                           equivalent=bool(not untested and np.isfinite(elo) and -m < elo and ehi < m), descriptive_only=small,
                           status=status, unit="site", population=THESE_SITES)  # fmt: skip
    return row, equivalence, power


def _worst_vs_best(axis: str, eligible: Sequence[GroupResult], k: int, structure: str, metric: str, *, level: float, higher: bool,
                   signed: bool, site_level: bool = False) -> dict:  # fmt: skip
    """The worst-versus-best row: the largest gap with a simultaneous interval over all pairs of groups.

    Patient-level axes: max-T bootstrap intervals (:func:`audit.stats.maxt.largest_gap`); site-level axes:
    Bonferroni-Welch intervals on site means (:func:`audit.stats.sitelevel.bonferroni_largest_gap`). The
    p-value is the adjusted p-value of the same pair and procedure, so it agrees with the interval.
    ``difference`` is worst - best (negative when higher is better); ``ratio`` is worst / best.
    """
    ratio_ci = (math.nan, math.nan)
    if site_level:
        site_values = [_site_values(g, k) for g in eligible]
        if signed:
            site_values = [np.abs(v) for v in site_values]
            higher = False
        worst, best, diff, lo, hi, p = bonferroni_largest_gap(site_values, higher=higher, level=level)
        means = np.array([np.mean(v) for v in site_values])
        test, unit = "welch (site means), Bonferroni over all pairs", "site"
        n_sites = (int(site_values[worst].size), int(site_values[best].size))
    else:
        means = np.array([g.estimate[k] for g in eligible])
        boot = np.column_stack([g.boot[:, k] for g in eligible])
        if signed:
            means, boot = np.abs(means), np.abs(boot)
            higher = False  # a larger |signed error| is worse
        n = np.array([g.n_patients[k] for g in eligible], dtype=float)
        worst, best, diff, lo, hi, p = largest_gap(means, boot, level, higher=higher, n=n)
        test, unit = "max-T bootstrap over all pairs (simultaneous)", "patient"
        if np.all(means > 0) and np.all(np.nan_to_num(boot, nan=1.0) > 0):  # the ratio: the same procedure on log means
            _, _, _, llo, lhi, _ = largest_gap(np.log(means), np.log(boot), level, higher=higher, n=n)
            ratio_ci = (float(np.exp(llo)), float(np.exp(lhi)))
        n_sites = (_n_sites(eligible[worst], k), _n_sites(eligible[best], k))
    ratio = float(means[worst] / means[best]) if means[best] else math.nan
    return dict(axis=axis, comparison="worst_vs_best", group=eligible[worst].group, reference=eligible[best].group, structure=structure,
                metric=metric, difference=float(diff), diff_ci_low=float(lo), diff_ci_high=float(hi), ratio=ratio, ratio_ci_low=ratio_ci[0],
                ratio_ci_high=ratio_ci[1], test=test, statistic=math.nan, p_value=float(p), descriptive_only=False, status=TESTED, unit=unit,
                n_sites_group=n_sites[0], n_sites_reference=n_sites[1], population=THESE_SITES)  # fmt: skip


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
