"""Simultaneous max-T bootstrap intervals over all pairwise gaps: a valid interval for the largest gap.

The bootstrap of the range of group means (max minus min, re-chosen in every resample) is biased away from 0:
under no difference its interval never covers 0 (issue 12). Instead, every pair of groups ``(i, j)`` gets the
studentized bootstrap deviation ``(d*_ij - d_ij) / se_ij`` of its difference ``d_ij = m_i - m_j`` (``se_ij`` the
bootstrap SD of ``d*_ij``), and ``c`` is the ``level`` quantile of the largest absolute deviation over all pairs
in each resample (Romano and Wolf 2005; Hothorn, Bretz and Westfall 2008 for the max-T idea). The intervals
``d_ij +- c se_ij`` hold for all pairs at once with probability ``level``, so the interval of the pair that the
data chose as worst and best keeps its coverage whatever the choice. The adjusted p-value of a pair is the share
of resamples whose largest deviation reaches its observed ``|d_ij| / se_ij`` (``(1 + hits) / (1 + B)``, never 0),
capped at the union (Bonferroni) bound of the same tail probability, ``M * 2 * P(|T| >= |d_ij| / se_ij)`` over the
``M`` pairs: the bound is never below the exact max-T tail, and it resolves p-values smaller than ``1 / (B + 1)``
that a family-wide Holm adjustment over hundreds of tests needs. The p-value is below ``1 - level`` essentially
exactly when the interval excludes 0, so the interval and the p-value shown beside it agree.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

__all__ = ["max_t_pairwise", "largest_gap"]


def max_t_pairwise(estimates: np.ndarray, boot: np.ndarray, level: float, n: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """Simultaneous intervals and adjusted p-values of all pairwise differences ``m_i - m_j`` (``i < j``).

    Parameters
    ----------
    estimates : numpy.ndarray
        (G,) group estimates.
    boot : numpy.ndarray
        (B, G) bootstrap draws of the estimates (independent across groups: each group resampled alone).
    level : float
        Simultaneous confidence level.
    n : numpy.ndarray, optional
        (G,) patients per group. When given, two small-sample corrections apply (the plain bootstrap
        under-covers with 10-20 patients per group): each group's bootstrap deviations are scaled by
        ``sqrt(n / (n - 1))`` (the bootstrap variance of a mean is ``(n - 1) / n`` times the unbiased one), and
        the critical value of pair ``(i, j)`` is moved to Student-t tails, ``t_{df}(Phi(c))`` with
        ``df = min(n_i, n_j) - 1``.

    Returns
    -------
    dict
        ``pairs`` (M, 2), ``difference``, ``se``, ``ci_low``, ``ci_high``, ``p`` (M,) and ``critical`` (float).
        Pairs whose bootstrap SD is 0 or undefined get an interval equal to the point and ``p`` 1 when the
        difference is 0, else 0 (degenerate data: identical values).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> boot = rng.normal([0.90, 0.85, 0.80], 0.01, size=(2000, 3))
    >>> out = max_t_pairwise(np.array([0.90, 0.85, 0.80]), boot, 0.95)
    >>> out["pairs"].tolist(), bool(out["critical"] > 1.96)
    ([[0, 1], [0, 2], [1, 2]], True)
    """
    estimates = np.asarray(estimates, dtype=float)
    boot = np.asarray(boot, dtype=float)
    g = estimates.size
    if n is not None:
        n = np.asarray(n, dtype=float)
        boot = estimates[None, :] + (boot - estimates[None, :]) * np.sqrt(n / np.maximum(n - 1.0, 1.0))[None, :]
    i, j = np.triu_indices(g, k=1)
    diff = estimates[i] - estimates[j]
    dboot = boot[:, i] - boot[:, j]
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, handled below
        se = np.nanstd(dboot, axis=0, ddof=1)
        ok = np.isfinite(se) & (se > 0) & np.isfinite(diff)
        dev = np.abs(dboot[:, ok] - diff[None, ok]) / se[None, ok]
        tmax = np.nanmax(dev, axis=1) if ok.any() else np.full(boot.shape[0], np.nan)
    tmax = tmax[np.isfinite(tmax)]
    critical = float(np.quantile(tmax, level)) if tmax.size else math.nan
    if n is not None:  # Student-t tails with the smaller group's degrees of freedom, same tail probability
        df = np.maximum(np.minimum(n[i], n[j]) - 1.0, 1.0)
        pair_critical = stats.t.ppf(stats.norm.cdf(critical), df)
    else:
        df = None
        pair_critical = np.full(diff.shape, critical)
    half = np.where(ok, pair_critical * np.where(ok, se, 0.0), 0.0)
    lo, hi = diff - half, diff + half
    p = np.where(diff == 0, 1.0, 0.0)
    if tmax.size:
        t_obs = np.abs(diff[ok]) / se[ok]
        observed = t_obs
        if df is not None:  # back to the normal scale of tmax
            observed = stats.norm.ppf(np.clip(stats.t.cdf(t_obs, df[ok]), 0.5, 1.0 - 1e-16))
        hits = (tmax[None, :] >= observed[:, None]).sum(axis=1)
        # the union (Bonferroni) bound of the same tail probability resolves p-values below 1 / (B + 1)
        tail = stats.t.sf(t_obs, df[ok]) if df is not None else stats.norm.sf(t_obs)
        union = np.minimum(1.0, diff.size * 2.0 * tail)
        p[ok] = np.minimum((1.0 + hits) / (1.0 + tmax.size), union)
    return {"pairs": np.column_stack([i, j]), "difference": diff, "se": se, "ci_low": lo, "ci_high": hi, "p": p, "critical": critical}


def largest_gap(
    estimates: np.ndarray, boot: np.ndarray, level: float, *, higher: bool, n: np.ndarray | None = None
) -> tuple[int, int, float, float, float, float]:
    """The worst and best group with the simultaneous max-T interval and adjusted p-value of their difference.

    Returns
    -------
    tuple
        ``(worst index, best index, worst - best, ci_low, ci_high, p)``; ``worst - best`` is negative when
        higher is better.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> boot = rng.normal([0.90, 0.80], 0.01, size=(2000, 2))
    >>> w, b, d, lo, hi, p = largest_gap(np.array([0.90, 0.80]), boot, 0.95, higher=True)
    >>> (w, b, round(d, 2), bool(hi < 0), bool(p < 0.01))
    (1, 0, -0.1, True, True)
    """
    estimates = np.asarray(estimates, dtype=float)
    worst, best = (int(np.nanargmin(estimates)), int(np.nanargmax(estimates))) if higher else (int(np.nanargmax(estimates)), int(np.nanargmin(estimates)))
    out = max_t_pairwise(estimates, boot, level, n)
    pairs = out["pairs"]
    a, b = min(worst, best), max(worst, best)
    k = int(np.flatnonzero((pairs[:, 0] == a) & (pairs[:, 1] == b))[0]) if a != b else -1
    if k < 0:
        return worst, best, 0.0, math.nan, math.nan, math.nan
    sign = 1.0 if worst == a else -1.0  # pairs hold m_a - m_b; the row reports worst - best
    lo, hi = sorted((sign * float(out["ci_low"][k]), sign * float(out["ci_high"][k])))
    return worst, best, sign * float(out["difference"][k]), lo, hi, float(out["p"][k])
