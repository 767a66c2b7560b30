"""Pre-registered acceptance criteria: pass, fail or inconclusive, with the numbers that decided.

One row per criterion x structure (x group for an axis scope). A row is *inconclusive* when its group has
fewer patients than ``min_group_size`` or no data; otherwise the chosen bound is compared with the
threshold. A gap criterion judges the groups of adequate size; when it would pass but a known group of the
axis is too small to be in the gaps, its row is inconclusive (that group could hold the deciding gap). A criterion **fails** if any row fails, is **inconclusive** if none fails but some row is
inconclusive, and **passes** only when every row passes (:func:`criterion_status`).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Sequence

import numpy as np
import pandas as pd

from audit.protocol import AcceptanceCriterion
from audit.records import UNKNOWN
from audit.stats.gaps import TESTED
from audit.stats.groups import INTERSECTION_SEP
from audit.stats.meta import NEW_SITE
from audit.stats.sitelevel import CONFOUNDED, MIN_SITES_PER_LEVEL

logger = logging.getLogger(__name__)

__all__ = ["evaluate_acceptance", "criterion_status", "ACCEPTANCE_COLUMNS", "NEW_SITE_SCOPE"]

#: The acceptance scope judged on the prediction interval for a new site.
NEW_SITE_SCOPE = "new_site"

ACCEPTANCE_COLUMNS = ("id", "description", "metric", "structure", "scope", "group", "estimate", "bound", "operator", "threshold", "value", "status", "reason",
                      "value_complete_case", "status_complete_case", "population")  # fmt: skip
_OPS = {">=": operator.ge, "<=": operator.le}
_FIELDS = {"mean": ("mean", "ci_low", "ci_high"), "median": ("median", None, None), "failure_rate": ("failure_rate", "failure_ci_low", "failure_ci_high")}


def _row(crit: AcceptanceCriterion, structure: str, group: str, value: float, status: str, reason: str) -> dict:
    population = NEW_SITE if crit.scope == NEW_SITE_SCOPE else "these sites"
    return dict(id=crit.id, description=crit.description, metric=crit.metric, structure=structure, scope=crit.scope, group=group,
                estimate=crit.estimate, bound=crit.bound, operator=crit.operator, threshold=crit.threshold, value=value, status=status, reason=reason,
                population=population)  # fmt: skip


def _judge(crit: AcceptanceCriterion, value: float) -> tuple[str, str]:
    if value is None or not np.isfinite(value):
        return "inconclusive", "no finite value to compare"
    ok = _OPS[crit.operator](value, crit.threshold)
    return ("pass" if ok else "fail"), f"{crit.bound} {crit.estimate} {value:.4g} {crit.operator} {crit.threshold:g} is {'true' if ok else 'false'}"


def _estimate_rows(crit: AcceptanceCriterion, estimates: pd.DataFrame, structure: str, min_group_size: int) -> list[dict]:
    point, low, high = _FIELDS[crit.estimate]
    field = {"point": point, "lower": low, "upper": high}[crit.bound] or point
    sub = estimates[(estimates["structure"] == structure) & (estimates["metric"] == crit.metric)]
    if crit.scope != "overall":
        sub = sub[sub["axis"] == crit.scope]
    if sub.empty:
        return [_row(crit, structure, "-", math.nan, "inconclusive", "no estimate for this structure and metric")]
    rows = []
    for rec in sub.itertuples(index=False):
        value = float(getattr(rec, field))
        if rec.n_patients < min_group_size:
            rows.append(_row(crit, structure, rec.group, value, "inconclusive", f"{rec.n_patients} patients < min_group_size {min_group_size}"))
            continue
        status, reason = _judge(crit, value)
        if field == point and crit.bound != "point":
            reason += " (no interval for this estimate: point value used)"
        rows.append(_row(crit, structure, rec.group, value, status, reason))
    return rows


def _small_known_groups(estimates: pd.DataFrame, crit: AcceptanceCriterion, structure: str) -> list[str]:
    """Known groups of the criterion's axis with data but fewer than min_group_size patients (left out of gaps)."""
    sub = estimates[(estimates["axis"] == crit.scope) & (estimates["structure"] == structure) & (estimates["metric"] == crit.metric)]
    sub = sub[sub["descriptive_only"].astype(bool) & (sub["n_patients"] > 0)]
    return [str(g) for g in sub["group"] if UNKNOWN not in str(g).split(INTERSECTION_SEP)]


def _confounded_groups(gaps: pd.DataFrame, crit: AcceptanceCriterion, structure: str) -> list[str]:
    """Known levels of a site-level axis that occur at a single site (their comparisons are not tested)."""
    sub = gaps[(gaps["axis"] == crit.scope) & (gaps["structure"] == structure) & (gaps["metric"] == crit.metric)]
    sub = sub[sub["status"] == CONFOUNDED]
    names = {str(g) for g in sub["group"]} | {str(r) for r in sub.loc[sub["n_sites_reference"] < MIN_SITES_PER_LEVEL, "reference"]}
    return sorted(n for n in names if UNKNOWN not in n.split(INTERSECTION_SEP))


def _gap_rows(crit: AcceptanceCriterion, gaps: pd.DataFrame, estimates: pd.DataFrame, structure: str) -> list[dict]:
    comparison = "vs_reference" if crit.estimate == "gap_vs_reference" else "worst_vs_best"
    sub = gaps[(gaps["axis"] == crit.scope) & (gaps["structure"] == structure) & (gaps["metric"] == crit.metric) & (gaps["comparison"] == comparison)]
    confounded = _confounded_groups(gaps, crit, structure)
    sub = sub[sub["status"] == TESTED]
    if sub.empty:
        why = f"no {comparison} gap between groups of at least min_group_size patients"
        if confounded:
            why += f"; level(s) {', '.join(confounded)} occur at a single site: confounded with site, not tested"
        return [_row(crit, structure, "-", math.nan, "inconclusive", why)]
    lo, hi, diff = sub["diff_ci_low"].abs(), sub["diff_ci_high"].abs(), sub["difference"].abs()
    crosses_zero = (sub["diff_ci_low"] <= 0) & (sub["diff_ci_high"] >= 0)
    if crit.bound == "upper":
        values = np.maximum(lo, hi)
    elif crit.bound == "lower":
        values = np.where(crosses_zero, 0.0, np.minimum(lo, hi))
    else:
        values = diff
    i = int(np.nanargmax(values.to_numpy(dtype=float))) if np.isfinite(values).any() else 0
    deciding = sub.iloc[i]
    status, reason = _judge(crit, float(np.asarray(values)[i]))
    label = f"{deciding['group']} vs {deciding['reference']}"
    reason = f"largest absolute gap ({label}): {reason}"
    small = _small_known_groups(estimates, crit, structure)
    if status == "pass" and small:  # an untested small group could hold a larger gap: it would decide the criterion
        status = "inconclusive"
        reason += f"; but group(s) {', '.join(small)} have fewer than min_group_size patients, are not in the gaps, and could decide it"
    if status == "pass" and confounded:  # a level seen at one site cannot be separated from that site
        status = "inconclusive"
        reason += f"; but level(s) {', '.join(confounded)} occur at a single site (confounded with site, not tested) and could decide it"
    return [_row(crit, structure, label, float(np.asarray(values)[i]), status, reason)]


def _new_site_rows(crit: AcceptanceCriterion, new_site: pd.DataFrame | None, structure: str) -> list[dict]:
    """``scope: new_site``: the prediction interval for a new site (lower/upper) or the pooled mean (point)."""
    sub = new_site[(new_site["structure"] == structure) & (new_site["metric"] == crit.metric)] if new_site is not None else pd.DataFrame()
    if sub.empty:
        return [_row(crit, structure, NEW_SITE, math.nan, "inconclusive", "no new-site meta-analysis for this structure and metric")]
    rec = sub.iloc[0]
    field = {"lower": "pi_low", "upper": "pi_high", "point": "pooled_mean"}[crit.bound]
    value = float(rec[field])
    if not np.isfinite(value):
        return [_row(crit, structure, NEW_SITE, value, "inconclusive", f"no new-site value ({rec['note'] or 'not estimable'})")]
    status, reason = _judge(crit, value)
    what = "pooled mean over sites" if crit.bound == "point" else f"{crit.bound} end of the 95% prediction interval for a new site"
    return [_row(crit, structure, NEW_SITE, value, status, f"{what} ({int(rec['n_sites'])} sites): {reason}")]


def evaluate_acceptance(
    criteria: Sequence[AcceptanceCriterion],
    *,
    overall: pd.DataFrame,
    group_estimates: pd.DataFrame,
    gaps: pd.DataFrame,
    structures: Sequence[str],
    min_group_size: int,
    new_site: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Judge every criterion; the table has one row per criterion x structure (x group).

    ``scope: new_site`` judges the random-effects prediction interval for a new site (``new_site`` table of
    :func:`audit.stats.meta.new_site_table`): ``lower``/``upper`` its ends, ``point`` the pooled mean.
    """
    rows: list[dict] = []
    for crit in criteria:
        targets = list(structures) if crit.structure == "all" else [crit.structure]
        for structure in targets:
            if crit.scope == NEW_SITE_SCOPE:
                rows.extend(_new_site_rows(crit, new_site, structure))
            elif crit.estimate in _FIELDS:
                source = overall if crit.scope == "overall" else group_estimates
                rows.extend(_estimate_rows(crit, source, structure, min_group_size))
            else:
                rows.extend(_gap_rows(crit, gaps, group_estimates, structure))
    return pd.DataFrame(rows, columns=list(ACCEPTANCE_COLUMNS))


def criterion_status(acceptance: pd.DataFrame) -> dict[str, str]:
    """Overall status per criterion id: any fail -> fail; else any inconclusive -> inconclusive; else pass."""
    out: dict[str, str] = {}
    for cid, sub in acceptance.groupby("id", sort=False):
        statuses = set(sub["status"])
        out[str(cid)] = "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"
    return out
