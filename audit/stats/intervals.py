"""Closed-form intervals and tests: Wilson interval, Welch TOST, minimum detectable difference, group tests."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator

import numpy as np
from scipy import stats

from audit.stats.permutation import permutation_omnibus, permutation_two_group

logger = logging.getLogger(__name__)

__all__ = ["wilson_interval", "clopper_pearson_interval", "proportion_interval", "PROPORTION_INTERVALS", "welch_tost", "tost_pvalue", "minimum_detectable_difference", "two_group_test", "omnibus_test", "DISTANCE_METRICS", "GAP_TESTS", "test_for_metric"]

#: Metrics whose case distributions are skewed (distances, volume errors): rank-based tests.
DISTANCE_METRICS = ("hd95", "hd", "assd", "abs_volume_error_ml", "rel_volume_error")


def _require_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("rng: a numpy Generator is required for permutation tests (seeded from statistics.seed)")
    return rng


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence scipy's precision warnings for nearly identical samples: repeated identical scores are
    legitimate data here, and the statistic is still returned (NaN where undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def wilson_interval(successes: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if n <= 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(0.5 + level / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson_interval(successes: int, n: int, level: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) interval from beta quantiles; conservative (coverage >= level)."""
    if n <= 0:
        return (math.nan, math.nan)
    alpha = 1.0 - level
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return (lo, hi)


#: Interval methods for a failure rate (a binomial proportion).
PROPORTION_INTERVALS = {"wilson": wilson_interval, "clopper_pearson": clopper_pearson_interval}


def proportion_interval(successes: int, n: int, level: float, *, method: str = "wilson") -> tuple[float, float]:
    """Interval of a binomial proportion by ``method`` (``wilson`` or ``clopper_pearson``)."""
    if method not in PROPORTION_INTERVALS:
        raise ValueError(f"failure_interval: allowed values are {sorted(PROPORTION_INTERVALS)}; found {method!r}")
    return PROPORTION_INTERVALS[method](successes, n, level)


def _welch(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Difference of means, its standard error and the Welch-Satterthwaite degrees of freedom."""
    vx, vy = np.var(x, ddof=1) / x.size, np.var(y, ddof=1) / y.size
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if se > 0 else math.inf
    return float(np.mean(x) - np.mean(y)), se, df


def welch_tost(x: np.ndarray, y: np.ndarray, margin: float) -> float:
    """p-value of the two one-sided Welch tests of ``|mean(x) - mean(y)| < margin`` (the larger of the two).

    Matches ``statsmodels.stats.weightstats.ttost_ind(x, y, -margin, margin, usevar="unequal")``.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or y.size < 2:
        return math.nan
    diff, se, df = _welch(x, y)
    return tost_pvalue(diff, se, margin, df=df)


def tost_pvalue(difference: float, se: float, margin: float, *, df: float = math.inf) -> float:
    """p-value of the two one-sided tests of ``|difference| < margin`` from an estimate and its standard error.

    The larger of ``P(T >= (d + margin) / se)`` (H0: d <= -margin) and ``P(T <= (d - margin) / se)`` (H0: d >= margin),
    T Student with ``df`` degrees of freedom (``inf``: standard normal, a z-TOST on a bootstrap standard error).

    Examples
    --------
    >>> round(tost_pvalue(0.01, 0.02, 0.05), 4)  # max(P(Z >= 3), P(Z <= -2))
    0.0228
    """
    if not (np.isfinite(difference) and np.isfinite(se)):
        return math.nan
    if se == 0:
        return 0.0 if abs(difference) < margin else 1.0
    dist = stats.norm if math.isinf(df) else stats.t(df)
    p_lower = dist.sf((difference + margin) / se)  # H0: diff <= -margin
    p_upper = dist.cdf((difference - margin) / se)  # H0: diff >= +margin
    return float(max(p_lower, p_upper))


def minimum_detectable_difference(sd_group: float, n_group: int, sd_ref: float, n_ref: int, *, alpha: float, power: float = 0.8) -> float:
    """Smallest true difference of means a two-sided test at ``alpha`` detects with ``power``.

    ``MDD = (z_{1-alpha/2} + z_{power}) * sqrt(sd_g^2 / n_g + sd_ref^2 / n_ref)`` (normal approximation).
    """
    if n_group < 2 or n_ref < 2 or not np.isfinite(sd_group) or not np.isfinite(sd_ref):
        return math.nan
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * math.sqrt(sd_group**2 / n_group + sd_ref**2 / n_ref))


#: ``statistics.gap_test`` values: ``auto`` (Welch or Mann-Whitney by metric) or ``permutation`` (every metric).
GAP_TESTS = ("auto", "permutation")


def test_for_metric(metric: str, gap_test: str = "auto") -> str:
    """``permutation`` when asked; otherwise ``mann_whitney`` for skewed distance/volume metrics, ``welch`` for bounded overlap metrics."""
    if gap_test not in GAP_TESTS:
        raise ValueError(f"gap_test: allowed values are {list(GAP_TESTS)}; found {gap_test!r}")
    if gap_test == "permutation":
        return "permutation"
    return "mann_whitney" if metric in DISTANCE_METRICS else "welch"


test_for_metric.__test__ = False  # not a pytest test despite its name


def two_group_test(
    x: np.ndarray, y: np.ndarray, test: str, *, rng: np.random.Generator | None = None, n_permutations: int = 10_000
) -> tuple[float, float]:
    """(statistic, p-value) of a two-sided Welch t-test, Mann-Whitney U test or permutation test on patient-level values.

    The permutation test's statistic is the difference of means (:mod:`audit.stats.permutation`); it needs ``rng``.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return (math.nan, math.nan)
    if test not in ("welch", "mann_whitney", "permutation"):
        raise ValueError(f"test: allowed values are 'welch', 'mann_whitney', 'permutation'; found {test!r}")
    if test == "permutation":
        return permutation_two_group(x, y, n_permutations=n_permutations, rng=_require_rng(rng))
    if test == "welch" and np.var(x) == 0 and np.var(y) == 0:
        return (math.nan, 1.0 if np.mean(x) == np.mean(y) else 0.0)
    with _quiet():
        res = stats.ttest_ind(x, y, equal_var=False) if test == "welch" else stats.mannwhitneyu(x, y, alternative="two-sided")
    return (float(res.statistic), float(res.pvalue))


def omnibus_test(
    samples: list[np.ndarray], test: str, *, rng: np.random.Generator | None = None, n_permutations: int = 10_000
) -> tuple[str, float, float]:
    """Test of equal centres across groups: Alexander-Govern (heteroscedastic ANOVA), Kruskal-Wallis, or a permutation test."""
    samples = [np.asarray(s, float)[np.isfinite(s)] for s in samples]
    samples = [s for s in samples if s.size >= 2]
    if len(samples) < 2:
        return ("none", math.nan, math.nan)
    if test == "permutation":
        stat, p = permutation_omnibus(samples, n_permutations=n_permutations, rng=_require_rng(rng))
        return ("permutation_between_ss", stat, p)
    if test == "mann_whitney":
        if len({v for s in samples for v in s}) < 2:
            return ("kruskal", math.nan, 1.0)
        with _quiet():
            res = stats.kruskal(*samples)
        return ("kruskal", float(res.statistic), float(res.pvalue))
    if all(np.var(s) == 0 for s in samples):
        return ("alexander_govern", math.nan, 1.0 if len({float(s[0]) for s in samples}) == 1 else 0.0)
    with _quiet():
        res = stats.alexandergovern(*samples)
    return ("alexander_govern", float(res.statistic), float(res.pvalue))
