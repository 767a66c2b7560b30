"""Gap tests, multiplicity adjustment and TOST equivalence for the grading rates between groups.

For every fairness grouping (vendor, sex, ...), rate of :data:`audit.grading.fairness.RATES` and group other than
the reference group (the protocol's, else the group with the most patients; ties: first in sorted order):

* ``difference`` = rate(group) - rate(reference), its percentile interval and a two-sided Wald p-value
  ``2 * P(Z >= |d| / SE)``, SE the standard deviation of the patient-cluster bootstrap differences (the same
  resamples as the intervals of :func:`audit.grading.fairness.summarize_rate_draws`);
* Holm and Benjamini-Hochberg adjusted p-values by :func:`audit.stats.gaps.adjust_pvalues` within each
  multiplicity family (:func:`audit.stats.families.adjust_by_family`): the comparisons a criterion names are
  ``pre-specified``, the rest ``exploratory``;
* with a pre-registered margin for the rate, TOST equivalence: equivalent when the ``1 - 2 alpha`` percentile
  interval lies inside (-margin, margin), as for segmentation gaps; ``p_tost`` by
  :func:`audit.stats.intervals.tost_pvalue` on the bootstrap SE (z-TOST).

A group or reference below ``min_group_size`` patients is ``not tested`` (no interval, no p-value, no verdict).
The tables have the columns of :data:`audit.stats.gaps.GAP_COLUMNS` and :data:`audit.stats.gaps.EQUIVALENCE_COLUMNS`
(``structure`` is ``all levels``; ``metric`` the rate).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from audit.grading.fairness import RATES, GradingCriterion, RateDraws
from audit.stats.bootstrap import percentile_interval
from audit.stats.families import EXPLORATORY, PRE_SPECIFIED, adjust_by_family
from audit.stats.gaps import EQUIVALENCE_COLUMNS, GAP_COLUMNS, NOT_TESTED, TESTED, THESE_SITES, adjust_pvalues
from audit.stats.intervals import tost_pvalue

logger = logging.getLogger(__name__)

__all__ = ["GAP_TEST", "STRUCTURE", "reference_group", "pre_specified_pairs", "rate_gaps", "adjust_grading_gaps"]

#: The ``test`` of a grading gap row: Wald z on the bootstrap standard error of the difference.
GAP_TEST = "bootstrap_wald"
#: The ``structure`` of a grading gap row (rates pool every graded level).
STRUCTURE = "all levels"
#: The rates whose gaps a difference criterion pre-specifies.
_DIFFERENCE_RATES = {"demographic_parity_difference": ("selection_rate",), "equalized_odds_difference": ("tpr", "fpr")}


def reference_group(point: pd.DataFrame, requested: str | None = None) -> str:
    """The ``requested`` group when present, else the group with the most patients (ties: first in sorted order).

    Examples
    --------
    >>> reference_group(pd.DataFrame({"group": ["A", "B", "C"], "n_patients": [5, 9, 9]}))
    'B'
    """
    groups = point["group"].astype(str).tolist()
    if requested is not None:
        if requested in groups:
            return requested
        logger.warning("reference group %r not present (groups %s); using the largest group", requested, groups)
    return str(point.sort_values(["n_patients", "group"], ascending=[False, True], kind="stable")["group"].iloc[0])


def pre_specified_pairs(criteria: Sequence[GradingCriterion]) -> set[tuple[str, str]]:
    """(grouping column, rate) pairs that the criteria name: their gap tests form the pre-specified family."""
    out: set[tuple[str, str]] = set()
    for crit in criteria:
        for rate in _DIFFERENCE_RATES.get(crit.estimate, (crit.estimate,)):
            out.add((crit.group_by, rate))
    return out


def rate_gaps(
    draws: RateDraws,
    *,
    level: float,
    alpha: float,
    min_group_size: int,
    margins: Mapping[str, float] | None = None,
    reference: str | None = None,
    pre_specified: set[tuple[str, str]] | frozenset = frozenset(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gap rows (p-values not yet adjusted) and TOST rows of one grouping column versus its reference group.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        Gap table (:data:`audit.stats.gaps.GAP_COLUMNS`, ``family`` set, adjusted columns NaN) and equivalence
        table (:data:`audit.stats.gaps.EQUIVALENCE_COLUMNS`), one row per group other than the reference and rate.
    """
    margins = dict(margins or {})
    point, cube, groups = draws.point, draws.draws, draws.groups
    ref = reference_group(point, reference)
    ri = groups.index(ref)
    names = list(RATES)
    gaps, equivalence = [], []
    for gi, g in enumerate(groups):
        if gi == ri:
            continue
        small = bool(point["n_patients"].iloc[gi] < min_group_size or point["n_patients"].iloc[ri] < min_group_size)
        for k, rate in enumerate(names):
            difference = float(point[rate].iloc[gi] - point[rate].iloc[ri])
            boot = cube[:, gi, k] - cube[:, ri, k]
            finite = boot[np.isfinite(boot)]
            testable = not small and math.isfinite(difference) and finite.size >= 2
            if testable:
                (lo,), (hi,) = percentile_interval(boot[:, None], level)
                se = float(np.std(finite, ddof=1))
                z = difference / se if se > 0 else (math.inf if difference else 0.0)
                p = float(2.0 * stats.norm.sf(abs(z))) if se > 0 else (0.0 if difference else 1.0)
            else:
                lo = hi = se = z = p = math.nan
            status = TESTED if testable else NOT_TESTED
            base = dict(axis=draws.column, group=g, reference=ref, structure=STRUCTURE, metric=rate)
            gaps.append(dict(**base, comparison="vs_reference", difference=difference, diff_ci_low=float(lo), diff_ci_high=float(hi),
                             ratio=math.nan, ratio_ci_low=math.nan, ratio_ci_high=math.nan, test=GAP_TEST if testable else NOT_TESTED,
                             statistic=z, p_value=p, descriptive_only=not testable, status=status, unit="patient", n_sites_group=math.nan,
                             n_sites_reference=math.nan, population=THESE_SITES,
                             family=PRE_SPECIFIED if (draws.column, rate) in pre_specified else EXPLORATORY))  # fmt: skip
            if rate in margins:
                m = float(margins[rate])
                if testable:
                    (elo,), (ehi,) = percentile_interval(boot[:, None], 1.0 - 2.0 * alpha)
                    p_tost = tost_pvalue(difference, se, m)
                else:
                    elo = ehi = p_tost = math.nan
                equivalence.append(dict(**base, margin=m, difference=difference, ci_low=float(elo), ci_high=float(ehi), p_tost=p_tost,
                                        equivalent=bool(testable and np.isfinite(elo) and -m < elo and ehi < m), descriptive_only=not testable,
                                        status=status, unit="patient", population=THESE_SITES))  # fmt: skip
    return pd.DataFrame(gaps, columns=list(GAP_COLUMNS)), pd.DataFrame(equivalence, columns=list(EQUIVALENCE_COLUMNS))


def adjust_grading_gaps(gaps: Sequence[pd.DataFrame], *, method: str, alpha: float) -> pd.DataFrame:
    """Concatenate the gap tables of every grouping and adjust their p-values within each family (Holm and BH always)."""
    parts = [g for g in gaps if len(g)]
    if not parts:
        return pd.DataFrame(columns=list(GAP_COLUMNS))
    table = pd.concat(parts, ignore_index=True)
    return adjust_by_family(table, adjust_pvalues, method, alpha).reset_index(drop=True)
