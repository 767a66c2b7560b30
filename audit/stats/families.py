"""Multiplicity families: the protocol's pre-registered comparisons versus everything else (exploratory).

The primary family is the primary metric's gaps on the subgroup axes the protocol lists (every structure,
versus the reference group and worst versus best). Other metrics, intersections and axes the pipeline adds on
its own (``site_role``) are exploratory: adjusted within their own family, so they cannot dilute or borrow
from the pre-registered tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["EXPLORATORY", "FAMILIES", "PRE_SPECIFIED", "adjust_by_family", "multiplicity_family"]

PRE_SPECIFIED = "pre-specified"
EXPLORATORY = "exploratory"
FAMILIES = (PRE_SPECIFIED, EXPLORATORY)


def multiplicity_family(gaps: pd.DataFrame, *, primary_metric: str, pre_registered_axes: Sequence[str]) -> pd.Series:
    """``pre-specified`` for the primary metric on a pre-registered single axis, ``exploratory`` otherwise.

    Examples
    --------
    >>> g = pd.DataFrame({"axis": ["site", "site", "race x sex"], "metric": ["dice", "hd95", "dice"]})
    >>> multiplicity_family(g, primary_metric="dice", pre_registered_axes=["site"]).tolist()
    ['pre-specified', 'exploratory', 'exploratory']
    """
    pre = (gaps["metric"] == primary_metric) & gaps["axis"].isin(list(pre_registered_axes))
    return pre.map({True: PRE_SPECIFIED, False: EXPLORATORY}).astype(object).rename("family")


def adjust_by_family(gaps: pd.DataFrame, adjust, method: str, alpha: float) -> pd.DataFrame:
    """Apply ``adjust(table, method, alpha)`` (:func:`audit.stats.gaps.adjust_pvalues`) within each ``family``; row order kept."""
    if gaps.empty:
        return adjust(gaps, method, alpha)
    parts = [adjust(sub, method, alpha) for _, sub in gaps.groupby("family", sort=False)]
    return pd.concat(parts).loc[gaps.index]
