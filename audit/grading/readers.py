"""Reader variability: reader-vs-reader agreement beside model-vs-reader agreement.

With two or more readers grading the same levels, the agreement between readers is the ceiling a model can
be expected to reach against any one of them. Every pair of raters is compared on the levels both graded.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from audit.grading.metrics import accuracy, confusion_matrix, weighted_kappa

logger = logging.getLogger(__name__)

__all__ = ["pairwise_agreement", "agreement_summary"]

_KEY = ["case_id", "level", "condition", "side"]


def pairwise_agreement(table: pd.DataFrame, *, n_grades: int, model: str = "model") -> pd.DataFrame:
    """Agreement of every pair of raters (readers and the model) on the levels both graded.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy grading table (``case_id``, ``level``, ``condition``, ``side``, ``reader``, ``grade``).
    n_grades : int
        Number of grades on the scale.
    model : str
        The ``reader`` value of the model's grades.

    Returns
    -------
    pandas.DataFrame
        ``rater_a``, ``rater_b``, ``kind`` (``reader-reader`` or ``model-reader``), ``n_levels``, ``accuracy``,
        ``kappa_linear``, ``kappa_quadratic``.

    Examples
    --------
    >>> t = pd.DataFrame({"case_id": ["a", "b"] * 3, "level": "L4-L5", "condition": "scs", "side": "none",
    ...                   "reader": ["r1", "r1", "r2", "r2", "model", "model"], "grade": [0, 2, 0, 1, 0, 2]})
    >>> pairwise_agreement(t, n_grades=3)[["rater_a", "rater_b", "accuracy"]].values.tolist()
    [['model', 'r1', 1.0], ['model', 'r2', 0.5], ['r1', 'r2', 0.5]]
    """
    wide = table.pivot_table(index=_KEY, columns="reader", values="grade", aggfunc="first")
    raters = sorted(wide.columns, key=lambda r: (r != model, r))
    rows = []
    for a, b in itertools.combinations(raters, 2):
        both = wide[[a, b]].dropna()
        cm = confusion_matrix(both[a].to_numpy(dtype=np.int64), both[b].to_numpy(dtype=np.int64), n_grades)
        rows.append({"rater_a": a, "rater_b": b, "kind": "model-reader" if model in (a, b) else "reader-reader", "n_levels": int(cm.sum()),
                     "accuracy": accuracy(cm), "kappa_linear": weighted_kappa(cm, "linear"), "kappa_quadratic": weighted_kappa(cm, "quadratic")})  # fmt: skip
    return pd.DataFrame(rows, columns=["rater_a", "rater_b", "kind", "n_levels", "accuracy", "kappa_linear", "kappa_quadratic"])


def agreement_summary(pairs: pd.DataFrame) -> dict[str, float]:
    """Mean quadratic kappa of reader pairs and of model-reader pairs, and the model's shortfall (reader - model).

    A positive ``model_shortfall`` means the model agrees with the readers less than they agree with each
    other; NaN when there are fewer than two readers.
    """
    rr = pairs.loc[pairs["kind"] == "reader-reader", "kappa_quadratic"]
    mr = pairs.loc[pairs["kind"] == "model-reader", "kappa_quadratic"]
    reader = float(rr.mean()) if len(rr) else float("nan")
    model = float(mr.mean()) if len(mr) else float("nan")
    return {"reader_reader_kappa_quadratic": reader, "model_reader_kappa_quadratic": model, "model_shortfall": reader - model}
