"""Grading metrics as pure functions of integer grade arrays and class probabilities.

Grades are integer codes ``0..k-1`` on an ordered :class:`~audit.grading.tables.GradeScale`. Every
function here is checked against scikit-learn in ``tests/grading/test_grading_metrics.py`` (definitions in
docs/grading.md). Undefined values (a sensitivity without positives, an AUROC with one class) are NaN,
never an exception, so that a small group is reported as "not estimable" rather than breaking a run.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger(__name__)

__all__ = [
    "RSNA_WEIGHTS",
    "confusion_matrix",
    "accuracy",
    "weighted_kappa",
    "per_grade_sensitivity_specificity",
    "binary_rates",
    "positive_score",
    "auroc",
    "roc_points",
    "brier_score",
    "reliability_bins",
    "weighted_log_loss",
    "any_severe_log_loss",
]

#: RSNA 2024 sample weights by reference grade: Normal/Mild 1, Moderate 2, Severe 4.
RSNA_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)
#: Probabilities are clipped to [EPS, 1 - EPS] before a logarithm (scikit-learn's choice for float64).
EPS = float(np.finfo(np.float64).eps)


def _grades(y: np.ndarray, n_grades: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= n_grades)):
        raise ValueError(f"{name}: must be a 1-D array of grade codes 0..{n_grades - 1}; found shape {y.shape} with range {(y.min(), y.max()) if y.size else ()}")
    return y.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_grades: int) -> np.ndarray:
    """Counts ``C[i, j]`` of reference grade ``i`` predicted as ``j`` (k x k, int).

    Examples
    --------
    >>> confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3).tolist()
    [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    """
    t = _grades(y_true, n_grades, "y_true")
    p = _grades(y_pred, n_grades, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have one length; found {t.size} and {p.size}")
    return np.bincount(t * n_grades + p, minlength=n_grades * n_grades).reshape(n_grades, n_grades)


def accuracy(cm: np.ndarray) -> float:
    """Share of exact grade agreement, ``trace(C) / sum(C)``; NaN for an empty matrix."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def weighted_kappa(cm: np.ndarray, weights: str | None = "quadratic") -> float:
    """Cohen's kappa with ``None``, ``"linear"`` or ``"quadratic"`` disagreement weights.

    ``kappa = 1 - sum(w * O) / sum(w * E)`` with ``O`` the observed confusion proportions, ``E`` the outer
    product of its marginals and ``w[i, j] = |i - j|`` (linear) or ``(i - j)^2`` (quadratic); 1 - I unweighted.
    Equals ``sklearn.metrics.cohen_kappa_score(..., labels=range(k), weights=...)``. NaN when ``sum(w * E) = 0``.

    Examples
    --------
    >>> round(weighted_kappa(np.array([[2, 1], [0, 1]]), None), 4)  # po = 3/4, pe = (3*2 + 1*2)/16 = 1/2
    0.5
    """
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights: allowed values are None, 'linear', 'quadratic'; found {weights!r}")
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    total = cm.sum()
    if total == 0:
        return float("nan")
    i, j = np.indices((k, k))
    w = (i != j).astype(float) if weights is None else np.abs(i - j).astype(float) if weights == "linear" else ((i - j) ** 2).astype(float)
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / total
    den = (w * expected).sum()
    return float(1.0 - (w * cm).sum() / den) if den > 0 else float("nan")


def per_grade_sensitivity_specificity(cm: np.ndarray) -> pd.DataFrame:
    """One-vs-rest sensitivity and specificity of each grade: ``grade``, ``sensitivity``, ``specificity``, ``n_reference``.

    Examples
    --------
    >>> per_grade_sensitivity_specificity(np.array([[3, 1], [1, 1]]))["sensitivity"].tolist()
    [0.75, 0.5]
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    positives = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    negatives = total - positives
    tn = total - positives - predicted + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(positives > 0, tp / np.where(positives > 0, positives, 1), np.nan)
        spec = np.where(negatives > 0, tn / np.where(negatives > 0, negatives, 1), np.nan)
    return pd.DataFrame({"grade": np.arange(cm.shape[0]), "sensitivity": sens, "specificity": spec, "n_reference": positives.astype(np.int64)})


def binary_rates(cm: np.ndarray, positive_from: int) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV with grades ``>= positive_from`` positive, and the four counts.

    Examples
    --------
    >>> r = binary_rates(np.array([[5, 1, 0], [1, 2, 1], [0, 0, 2]]), 1)
    >>> r["sensitivity"], r["specificity"], r["ppv"], r["npv"]
    (0.8333333333333334, 0.8333333333333334, 0.8333333333333334, 0.8333333333333334)
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = cm[positive_from:, positive_from:].sum()
    fn = cm[positive_from:, :positive_from].sum()
    fp = cm[:positive_from, positive_from:].sum()
    tn = cm[:positive_from, :positive_from].sum()

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else float("nan")

    return {"tp": float(tp), "fn": float(fn), "fp": float(fp), "tn": float(tn), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}  # fmt: skip


def positive_score(proba: np.ndarray, positive_from: int) -> np.ndarray:
    """Probability of a grade ``>= positive_from``: the row sums of ``proba[:, positive_from:]``."""
    proba = np.asarray(proba, dtype=np.float64)
    return proba[:, positive_from:].sum(axis=1)


def auroc(y_binary: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve, the Mann-Whitney probability ``P(score+ > score-) + P(tie) / 2``.

    NaN when only one class is present. Equals ``sklearn.metrics.roc_auc_score``.

    Examples
    --------
    >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y_binary).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_points(y_binary: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """ROC curve points ``fpr``, ``tpr`` at every distinct threshold (descending), starting at (0, 0)."""
    y = np.asarray(y_binary).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], dtype=int)
    tps = np.cumsum(yy)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return pd.DataFrame({"threshold": np.r_[np.inf, s[last]], "fpr": np.r_[0.0, fps / n_neg], "tpr": np.r_[0.0, tps / n_pos]})


def brier_score(y_binary: np.ndarray, score: np.ndarray) -> float:
    """Mean squared difference between the predicted probability and the 0/1 outcome (lower is better)."""
    y = np.asarray(y_binary, dtype=np.float64)
    return float(np.mean((np.asarray(score, dtype=np.float64) - y) ** 2)) if y.size else float("nan")


def reliability_bins(y_binary: np.ndarray, score: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability curve on ``n_bins`` equal-width bins ``(lo, hi]`` of [0, 1] (0 in the first); empty bins left out.

    Columns ``bin``, ``mean_predicted``, ``observed``, ``n``. ``mean_predicted`` and ``observed`` equal
    ``sklearn.calibration.calibration_curve(strategy="uniform")``'s ``prob_pred`` and ``prob_true``.
    """
    y = np.asarray(y_binary, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], score, side="left")  # bins (lo, hi]; the first is [0, 1/n_bins]
    n = np.bincount(idx, minlength=n_bins)
    pred = np.bincount(idx, weights=score, minlength=n_bins)
    obs = np.bincount(idx, weights=y, minlength=n_bins)
    keep = n > 0
    return pd.DataFrame({"bin": np.flatnonzero(keep), "mean_predicted": pred[keep] / n[keep], "observed": obs[keep] / n[keep], "n": n[keep]})


def weighted_log_loss(y_true: np.ndarray, proba: np.ndarray, weights: tuple[float, ...] = RSNA_WEIGHTS) -> float:
    """Sample-weighted multi-class log loss, the RSNA 2024 per-condition score.

    ``sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]`` with ``w`` indexed by the reference grade (1/2/4) and
    probabilities clipped to ``[eps, 1 - eps]`` and renormalized per row, as
    ``sklearn.metrics.log_loss(y_true, proba, sample_weight=w[y_true], labels=range(k))``.

    Examples
    --------
    >>> round(weighted_log_loss(np.array([0, 2]), np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])), 6)
    1.247665
    """
    proba = np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0 - EPS)
    proba = proba / proba.sum(axis=1, keepdims=True)
    y = _grades(y_true, proba.shape[1], "y_true")
    if len(weights) != proba.shape[1]:
        raise ValueError(f"weights: one per grade ({proba.shape[1]}); found {len(weights)}")
    w = np.asarray(weights, dtype=np.float64)[y]
    if w.sum() == 0:
        return float("nan")
    return float(np.sum(w * -np.log(proba[np.arange(y.size), y])) / w.sum())


def any_severe_log_loss(table: pd.DataFrame, *, severe: int = 2, weights: tuple[float, ...] = RSNA_WEIGHTS) -> float:
    """RSNA 2024 ``any_severe_spinal`` term: binary log loss per study over the spinal canal levels.

    Per case: label = any reference level severe, prediction = the largest severe probability across levels,
    weight = the largest level weight (4 if any severe, else 2 if any moderate, else 1). ``table`` holds
    ``case_id``, ``grade_ref`` and ``p_{severe}`` for the spinal canal rows.
    """
    col = f"p_{severe}"
    w_level = np.asarray(weights, dtype=np.float64)[table["grade_ref"].to_numpy(dtype=np.int64)]
    per_case = pd.DataFrame({"case_id": table["case_id"].to_numpy(), "y": (table["grade_ref"].to_numpy() == severe).astype(float),
                             "p": table[col].to_numpy(dtype=np.float64), "w": w_level}).groupby("case_id").max()  # fmt: skip
    if per_case.empty:
        return float("nan")
    p = np.clip(per_case["p"].to_numpy(), EPS, 1.0 - EPS)
    y = per_case["y"].to_numpy()
    w = per_case["w"].to_numpy()
    return float(np.sum(w * -(y * np.log(p) + (1 - y) * np.log(1 - p))) / w.sum())
