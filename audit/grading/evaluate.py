"""Pair reference and model grades, and compute the metric and confusion tables per breakdown.

The paired table has one row per graded level: ``case_id``, ``patient_id``, ``level``, ``condition``, ``side``,
case metadata, ``grade_ref``, ``grade_model`` and the model's ``p_*`` when given. A reference level the model
did not grade is a recorded :class:`~audit.records.CaseFailure` (``MissingPrediction``), and a model grade
without a reference grade one of type ``MissingReference`` (not scored); the report counts both.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from audit.grading import metrics as gm
from audit.grading.tables import GRADING_COLUMNS, GradeScale, probability_columns
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = ["KEY", "pair_grades", "metric_rows", "metric_table", "confusion_table"]

KEY: list[str] = ["case_id", "level", "condition", "side"]


def pair_grades(table: pd.DataFrame, scale: GradeScale, *, reference: str, model: str = "model") -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Join the ``reference`` reader's grades with the ``model``'s on (case, level, condition, side).

    Examples
    --------
    >>> from audit.grading.tables import RSNA_SCALE
    >>> t = pd.DataFrame({"case_id": ["a", "a", "b"], "patient_id": ["a", "a", "b"], "level": "L4-L5", "condition": "scs", "side": "none",
    ...                   "reader": ["ref", "model", "ref"], "grade": [2, 1, 0]})
    >>> paired, failures = pair_grades(t, RSNA_SCALE, reference="ref")
    >>> paired[["case_id", "grade_ref", "grade_model"]].values.tolist(), failures[0].error_type
    ([['a', 2, 1]], 'MissingPrediction')
    """
    probs = [c for c in probability_columns(scale) if c in table.columns]
    for who in (reference, model):
        if not (table["reader"] == who).any():
            raise ValueError(f"reader: no rows for {who!r}; readers found {sorted(table['reader'].unique())}")
    meta = [c for c in table.columns if c not in (*GRADING_COLUMNS, *probability_columns(scale))]
    ref = table[table["reader"] == reference][[*KEY, "patient_id", *meta, "grade"]].rename(columns={"grade": "grade_ref"})
    mod = table[table["reader"] == model][[*KEY, "grade", *probs]].rename(columns={"grade": "grade_model"})
    merged = ref.merge(mod, on=KEY, how="left", indicator=True)
    missing = merged["_merge"] == "left_only"
    failures = [
        CaseFailure(case_id=str(r.case_id), stage="grading", error_type="MissingPrediction", site=str(getattr(r, "site", "Unknown")),
                    error=f"no {model!r} grade for {r.level} {r.condition} {r.side} graded by {reference!r}")  # fmt: skip
        for r in merged[missing].itertuples()
    ]
    orphan = mod.merge(ref[KEY], on=KEY, how="left", indicator=True)
    orphan = orphan[orphan["_merge"] == "left_only"]
    failures += [
        CaseFailure(case_id=str(r.case_id), stage="grading", error_type="MissingReference",
                    error=f"no {reference!r} grade for {r.level} {r.condition} {r.side} graded by {model!r}: not scored")  # fmt: skip
        for r in orphan.itertuples()
    ]
    if len(orphan):
        logger.warning("%d model grades have no %r reference grade and are not scored (recorded as failures)", len(orphan), reference)
    paired = merged[~missing].drop(columns="_merge").reset_index(drop=True)
    paired["grade_model"] = paired["grade_model"].astype(np.int64)
    return paired, failures


def metric_rows(paired: pd.DataFrame, scale: GradeScale) -> dict[str, float]:
    """Every grading metric of one set of paired levels (names as in docs/grading.md)."""
    k = scale.n_grades
    cm = gm.confusion_matrix(paired["grade_ref"].to_numpy(), paired["grade_model"].to_numpy(), k)
    out: dict[str, float] = {"n_levels": float(cm.sum()), "n_patients": float(paired["patient_id"].nunique()), "accuracy": gm.accuracy(cm),
                             "kappa_linear": gm.weighted_kappa(cm, "linear"), "kappa_quadratic": gm.weighted_kappa(cm, "quadratic")}  # fmt: skip
    per = gm.per_grade_sensitivity_specificity(cm)
    for rec in per.itertuples():
        out[f"sensitivity_grade{rec.grade}"] = float(rec.sensitivity)
        out[f"specificity_grade{rec.grade}"] = float(rec.specificity)
    out["severe_sensitivity"] = float(per.loc[scale.severe, "sensitivity"])
    rates = gm.binary_rates(cm, scale.positive_from)
    out.update({f"{name}_binary": rates[name] for name in ("sensitivity", "specificity", "ppv", "npv")})
    probs = probability_columns(scale)
    if all(c in paired.columns for c in probs) and len(paired):
        proba = paired[probs].to_numpy(dtype=np.float64)
        yb = (paired["grade_ref"].to_numpy() >= scale.positive_from).astype(int)
        score = gm.positive_score(proba, scale.positive_from)
        out["auroc_binary"] = gm.auroc(yb, score)
        out["brier_binary"] = gm.brier_score(yb, score)
        if k == len(gm.RSNA_WEIGHTS):
            out["rsna_weighted_log_loss"] = gm.weighted_log_loss(paired["grade_ref"].to_numpy(), proba)
    return out


def metric_table(paired: pd.DataFrame, scale: GradeScale, breakdowns: list[str]) -> pd.DataFrame:
    """Long metric table: ``breakdown``, ``group``, ``metric``, ``value``; breakdown ``all`` plus one per column.

    ``breakdowns`` are columns of ``paired`` (``level``, ``site``, ``vendor``, ``sex``, ...).
    """
    rows = [{"breakdown": "all", "group": "all", "metric": m, "value": v} for m, v in metric_rows(paired, scale).items()]
    for col in breakdowns:
        for group, sub in paired.groupby(paired[col].astype(str), sort=True):
            rows += [{"breakdown": col, "group": group, "metric": m, "value": v} for m, v in metric_rows(sub, scale).items()]
    return pd.DataFrame(rows)


def confusion_table(paired: pd.DataFrame, scale: GradeScale, breakdowns: list[str]) -> pd.DataFrame:
    """Long confusion counts: ``breakdown``, ``group``, ``grade_ref``, ``grade_model``, ``count`` (every cell, zeros too)."""
    k = scale.n_grades
    parts = [("all", "all", paired)] + [(col, g, sub) for col in breakdowns for g, sub in paired.groupby(paired[col].astype(str), sort=True)]
    rows = []
    for col, group, sub in parts:
        cm = gm.confusion_matrix(sub["grade_ref"].to_numpy(), sub["grade_model"].to_numpy(), k)
        rows += [{"breakdown": col, "group": group, "grade_ref": i, "grade_model": j, "count": int(cm[i, j])} for i in range(k) for j in range(k)]
    return pd.DataFrame(rows)
