"""Failed cases in acceptance criteria: the pre-registered policy ``statistics.failure_policy``.

A case the pipeline could not process (status ``failed``) is data about the model, not a case to forget:
dropping it can only make a criterion easier to meet (removing the hard site's predictions used to flip a
failing overall Dice criterion to pass). With the default policy ``worst_value``:

* every failed value is scored at the **worst value** of its metric: the bound of a bounded metric (Dice, IoU,
  NSD: 0), otherwise the worst finite value observed for that structure and metric in the run (the largest
  distance, the largest absolute volume error); a failed value also counts as a failure in failure rates;
* the criteria are judged again on these data, and each row's status is the **worse** of this judgement and
  the complete-case one (fail > inconclusive > pass), so a criterion never improves because cases failed;
* the complete-case value and status stay beside it (``value_complete_case``, ``status_complete_case``).

``complete_case`` judges the cases that did not fail only (the descriptive tables always do, and count the
failures in ``n_failed``). The estimate tables of the report are complete-case; only acceptance uses the policy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from audit.stats.groups import Prepared

logger = logging.getLogger(__name__)

__all__ = ["FAILURE_POLICIES", "worst_values", "impute_failures", "combine_acceptance"]

#: ``statistics.failure_policy`` values.
FAILURE_POLICIES = ("worst_value", "complete_case")
_RANK = {"pass": 0, "inconclusive": 1, "fail": 2}


def worst_values(
    prepared: Prepared, *, higher_is_better: Mapping[str, bool], bounded: Mapping[str, bool], signed: Sequence[str] = ()
) -> np.ndarray:
    """The worst value of every (structure, metric) column (K,); NaN when a column has no finite value to go by.

    Examples
    --------
    >>> from audit.stats.groups import prepare
    >>> t = pd.DataFrame({"case_id": ["a", "b", "a", "b"], "patient_id": ["a", "b", "a", "b"], "site": "s",
    ...                   "structure": "disc", "metric": ["dice", "dice", "hd95", "hd95"], "value": [0.9, 0.8, 2.0, 5.0], "status": "ok"})
    >>> worst_values(prepare(t, structures=["disc"], metrics=["dice", "hd95"]), higher_is_better={"dice": True, "hd95": False},
    ...              bounded={"dice": True, "hd95": False}).tolist()
    [0.0, 5.0]
    """
    out = np.full(len(prepared.columns), np.nan)
    for k, (_, metric) in enumerate(prepared.columns):
        higher = higher_is_better.get(metric, True)
        if bounded.get(metric, False):
            out[k] = 0.0 if higher else 1.0
            continue
        col = prepared.values[:, k]
        col = col[np.isfinite(col)]
        if not col.size:
            continue
        if metric in signed:
            out[k] = col[np.argmax(np.abs(col))]
        else:
            out[k] = col.min() if higher else col.max()
    return out


def impute_failures(
    prepared: Prepared, *, higher_is_better: Mapping[str, bool], bounded: Mapping[str, bool], signed: Sequence[str] = ()
) -> tuple[Prepared, str]:
    """A copy of ``prepared`` with every failed value scored at its column's worst value, and a plain note."""
    worst = worst_values(prepared, higher_is_better=higher_is_better, bounded=bounded, signed=signed)
    fill = prepared.failed & np.isfinite(worst)[None, :]
    values = np.where(fill, worst[None, :], prepared.values)
    evaluable = np.where(fill, worst[None, :], prepared.evaluable)
    n_cases = int(fill.any(axis=1).sum())
    note = (f"failure_policy worst_value: {n_cases} failed case(s) count in the acceptance criteria at the worst value of each metric "
            f"(bounded metrics at their bound, others at the worst value observed); each criterion row takes the worse of that and the "
            f"complete-case judgement, shown beside it")  # fmt: skip
    return dataclasses.replace(prepared, values=values, evaluable=evaluable, failed=prepared.failed & ~fill), note


def combine_acceptance(policy: pd.DataFrame, complete_case: pd.DataFrame, *, imputed: bool = True) -> pd.DataFrame:
    """Acceptance rows under the failure policy with the complete-case value and status beside them.

    Both tables come from the same criteria, structures and groups in the same order. A row's ``status`` is
    the worse of the two (fail > inconclusive > pass); when failed cases were scored (``imputed``) the reason
    ends with the complete-case value and status.
    """
    if len(policy) != len(complete_case) or not (policy[["id", "structure"]].to_numpy() == complete_case[["id", "structure"]].to_numpy()).all():
        raise ValueError("combine_acceptance: the two acceptance tables do not list the same criteria rows in the same order")
    out = policy.reset_index(drop=True).copy()
    cc = complete_case.reset_index(drop=True)
    out["value_complete_case"] = cc["value"].to_numpy()
    out["status_complete_case"] = cc["status"].to_numpy()
    worse = [a if _RANK[a] >= _RANK[b] else b for a, b in zip(out["status"], cc["status"])]
    if imputed:
        out["reason"] = [f"failed cases at the worst value: {r}; complete case: {v:.4g}, {c}" for r, v, c in zip(out["reason"], cc["value"], cc["status"])]
    out["status"] = worse
    return out
