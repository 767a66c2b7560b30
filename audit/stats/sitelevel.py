"""Site-level axes: columns that are properties of a site (vendor, field strength, scanner model) are compared
with the **site** as the unit of analysis.

A column is *site-level* when, among the cases with a known value, every site has a single value and at least
two values occur overall (detected from the data, never from the column's name). Comparing its levels compares
sites: patients of one site share the site's effect, so a patient-level test treats correlated patients as
independent and rejects far too often when sites differ (issue 12: 0.40 instead of 0.05).

Here each site contributes one value per group and column: the mean of its patients' means. Two levels are
compared by Welch's t-test on these site means (the number of sites is the sample size), with the Welch interval
of the difference of the average site means. A level with fewer than ``MIN_SITES_PER_LEVEL`` sites cannot be
separated from its site: the comparison is reported as ``confounded with site`` with no interval, no p-value and
no verdict other than inconclusive. The largest gap between levels uses Bonferroni-adjusted Welch intervals over
all pairs of levels (simultaneous coverage at least the confidence level).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from audit.records import UNKNOWN

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_SITES_PER_LEVEL",
    "CONFOUNDED",
    "site_level_columns",
    "group_site_means",
    "welch_site_gap",
    "bonferroni_largest_gap",
]

#: A level of a site-level axis needs this many sites to be compared with another level.
MIN_SITES_PER_LEVEL = 2
#: Status and test label of a comparison that a single site decides.
CONFOUNDED = "confounded with site"


def site_level_columns(cases: pd.DataFrame, columns: Sequence[str], *, site: str = "site") -> list[str]:
    """The columns among ``columns`` that are constant within every site and vary between sites.

    Missing and ``Unknown`` values are ignored (a site with one Unknown case is still single-valued).

    Examples
    --------
    >>> cases = pd.DataFrame({"site": ["a", "a", "b", "b"], "vendor": ["GE", "GE", "Siemens", "Unknown"], "sex": ["F", "M", "F", "M"]})
    >>> site_level_columns(cases, ["vendor", "sex"])
    ['vendor']
    """
    out = []
    for col in columns:
        if col == site or col not in cases.columns:
            continue
        values = cases[col].astype(object)
        known = values.notna() & (values.astype(str) != UNKNOWN)
        if not known.any():
            continue
        sub = pd.DataFrame({"site": cases.loc[known, site].to_numpy(), "value": values[known].astype(str).to_numpy()})
        if sub["value"].nunique() >= 2 and (sub.groupby("site")["value"].nunique() <= 1).all():
            out.append(col)
    return out


def group_site_means(patient_means: np.ndarray, patient_sites: np.ndarray) -> dict[str, float]:
    """Mean of patient means per site (sites without a finite value are left out).

    Examples
    --------
    >>> group_site_means(np.array([0.8, 0.9, 0.7, np.nan]), np.array(["a", "a", "b", "b"]))
    {'a': 0.85, 'b': 0.7}
    """
    values = np.asarray(patient_means, dtype=float)
    finite = np.isfinite(values)
    series = pd.Series(values[finite]).groupby(np.asarray(patient_sites)[finite]).mean()
    return {str(k): float(round(v, 15)) for k, v in series.items()}


def welch_site_gap(x: np.ndarray, y: np.ndarray, level: float) -> tuple[float, float, float, float, float]:
    """Welch comparison of two levels' site means.

    Parameters
    ----------
    x, y : numpy.ndarray
        Site means of the group and of the reference (one value per site).
    level : float
        Confidence level of the interval.

    Returns
    -------
    tuple of float
        ``(difference, ci_low, ci_high, t, p)`` with ``difference = mean(x) - mean(y)``; all NaN except the
        difference when a level has fewer than :data:`MIN_SITES_PER_LEVEL` sites (confounded with site).
        When both levels have zero between-site spread the interval is the point and ``p`` is 1 (equal) or 0.

    Examples
    --------
    >>> d, lo, hi, t, p = welch_site_gap(np.array([0.80, 0.84, 0.82]), np.array([0.86, 0.90, 0.88, 0.87]), 0.95)
    >>> round(d, 4), bool(lo < d < hi)
    (-0.0575, True)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    diff = float(np.mean(x) - np.mean(y)) if x.size and y.size else math.nan
    if x.size < MIN_SITES_PER_LEVEL or y.size < MIN_SITES_PER_LEVEL:
        return diff, math.nan, math.nan, math.nan, math.nan
    vx, vy = np.var(x, ddof=1) / x.size, np.var(y, ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff, math.nan, 1.0 if diff == 0 else 0.0
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    t = diff / se
    q = stats.t.ppf(0.5 + level / 2.0, df)
    return diff, diff - q * se, diff + q * se, float(t), float(2 * stats.t.sf(abs(t), df))


def bonferroni_largest_gap(site_means: Sequence[np.ndarray], *, higher: bool, level: float) -> tuple[int, int, float, float, float, float]:
    """Worst and best level by the average site mean, with a Bonferroni-simultaneous Welch interval.

    Every pair of levels gets a Welch interval at level ``1 - (1 - level) / m`` (``m`` pairs), so all
    intervals hold together with probability at least ``level`` and the one for the data-chosen worst and
    best levels keeps its coverage; ``p`` is the Bonferroni-adjusted Welch p-value of that pair (it is below
    ``1 - level`` exactly when the interval excludes 0).

    Returns
    -------
    tuple
        ``(worst index, best index, difference, ci_low, ci_high, p)``.
    """
    means = np.array([np.mean(np.asarray(s, float)) for s in site_means])
    worst, best = (int(np.argmin(means)), int(np.argmax(means))) if higher else (int(np.argmax(means)), int(np.argmin(means)))
    m = math.comb(len(site_means), 2)
    pair_level = 1.0 - (1.0 - level) / max(m, 1)
    diff, lo, hi, _, p = welch_site_gap(site_means[worst], site_means[best], pair_level)
    return worst, best, diff, lo, hi, min(1.0, p * m) if np.isfinite(p) else math.nan

