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
from audit.stats.bootstrap import patient_weights, percentile_interval

logger = logging.getLogger(__name__)

__all__ = ["CONSENSUS", "pairwise_agreement", "agreement_summary", "consensus_grades", "agreement_ceiling"]

_KEY = ["case_id", "level", "condition", "side"]
#: The rater name of the readers' consensus grade in the agreement tables.
CONSENSUS = "consensus"


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


def consensus_grades(table: pd.DataFrame, *, model: str = "model") -> pd.DataFrame:
    """The readers' consensus grade per level: the median of the readers' grades, the lower middle grade for an even count.

    The majority grade when a strict majority exists among two or three readers; with two readers who disagree,
    the less severe of the two (``statistics.median_low``). Levels graded by no reader are left out.

    Returns
    -------
    pandas.DataFrame
        ``case_id``, ``level``, ``condition``, ``side``, ``grade`` (int) and ``n_readers``.

    Examples
    --------
    >>> t = pd.DataFrame({"case_id": ["a"] * 3 + ["b"] * 2, "level": "L4-L5", "condition": "scs", "side": "none",
    ...                   "reader": ["r1", "r2", "r3", "r1", "r2"], "grade": [2, 1, 2, 0, 2]})
    >>> consensus_grades(t)[["case_id", "grade", "n_readers"]].values.tolist()
    [['a', 2, 3], ['b', 0, 2]]
    """
    readers = table[table["reader"] != model]
    grouped = readers.groupby(_KEY, sort=True)["grade"]
    out = grouped.agg(lambda g: int(np.sort(g.to_numpy())[(len(g) - 1) // 2])).rename("grade").to_frame()
    out["n_readers"] = grouped.size()
    return out.reset_index().astype({"grade": np.int64, "n_readers": np.int64})


def _patient_confusions(a: pd.Series, b: pd.Series, patient_codes: np.ndarray, n_patients: int, n_grades: int) -> np.ndarray:
    """(P x k*k) confusion counts per patient of the levels both raters graded."""
    both = (a.notna() & b.notna()).to_numpy()
    cells = patient_codes[both] * n_grades * n_grades + a.to_numpy()[both].astype(np.int64) * n_grades + b.to_numpy()[both].astype(np.int64)
    return np.bincount(cells, minlength=n_patients * n_grades * n_grades).reshape(n_patients, n_grades * n_grades).astype(np.float64)


def _kappas(confusions: np.ndarray, n_grades: int) -> np.ndarray:
    return np.array([weighted_kappa(c.reshape(n_grades, n_grades), "quadratic") for c in confusions])


def agreement_ceiling(
    table: pd.DataFrame, *, n_grades: int, model: str = "model", n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Model versus the readers' consensus, and the readers' agreement as the model's ceiling, with cluster-bootstrap intervals.

    Quadratic kappa of three quantities, on one set of patient-cluster resamples (a drawn patient keeps all
    levels; every confusion matrix is a sum of per-patient confusion counts):

    * ``model_vs_consensus``: the model against :func:`consensus_grades` (needs one reader or more);
    * ``reader_reader_mean`` and ``model_reader_mean``: the mean kappa over reader pairs and over model-reader pairs;
    * ``shortfall`` = ``reader_reader_mean - model_reader_mean`` (positive: the model agrees with the readers
      less than they agree with each other). Needs two readers or more, else NaN.

    Returns
    -------
    pandas.DataFrame
        ``quantity``, ``estimate``, ``ci_low``, ``ci_high``, ``n_levels`` (levels behind the estimate; for a mean,
        those of its pairs together), ``n_patients``.
    """
    wide = table.pivot_table(index=_KEY, columns="reader", values="grade", aggfunc="first")
    patients = table.drop_duplicates(_KEY).set_index(_KEY)["patient_id"].astype(str).reindex(wide.index)
    codes, uniques = pd.factorize(patients, sort=True)
    n_patients = len(uniques)
    readers = sorted(r for r in wide.columns if r != model)
    columns = ["quantity", "estimate", "ci_low", "ci_high", "n_levels", "n_patients"]
    if model not in wide.columns or not readers or n_patients == 0:
        return pd.DataFrame(columns=columns)
    consensus = consensus_grades(table, model=model).set_index(_KEY)["grade"].reindex(wide.index)
    rr = [(a, b) for i, a in enumerate(readers) for b in readers[i + 1:]]
    pairs = {"model_vs_consensus": [(wide[model], consensus)], "reader_reader_mean": [(wide[a], wide[b]) for a, b in rr],
             "model_reader_mean": [(wide[model], wide[r]) for r in readers]}  # fmt: skip
    weights = patient_weights(np.random.default_rng(seed), n_patients, n_resamples)
    estimates, draws, levels, people = {}, {}, {}, {}
    for name, items in pairs.items():
        if not items:
            estimates[name], draws[name], levels[name], people[name] = float("nan"), np.full(n_resamples, np.nan), 0, 0
            continue
        per = [_patient_confusions(a, b, codes, n_patients, n_grades) for a, b in items]
        estimates[name] = float(np.mean([_kappas(c.sum(axis=0, keepdims=True), n_grades)[0] for c in per]))
        draws[name] = np.mean([_kappas(weights @ c, n_grades) for c in per], axis=0)
        levels[name] = int(sum(c.sum() for c in per))
        people[name] = int(np.unique(np.concatenate([np.flatnonzero(c.sum(axis=1) > 0) for c in per])).size)
    estimates["shortfall"] = estimates["reader_reader_mean"] - estimates["model_reader_mean"]
    draws["shortfall"] = draws["reader_reader_mean"] - draws["model_reader_mean"]
    both = levels["reader_reader_mean"] > 0 and levels["model_reader_mean"] > 0
    levels["shortfall"] = levels["reader_reader_mean"] + levels["model_reader_mean"] if both else 0
    people["shortfall"] = max(people["reader_reader_mean"], people["model_reader_mean"]) if both else 0
    rows = []
    for name in ("model_vs_consensus", "reader_reader_mean", "model_reader_mean", "shortfall"):
        finite = np.isfinite(draws[name]).sum() >= 2 and np.isfinite(estimates[name])
        lo, hi = percentile_interval(draws[name][:, None], level) if finite else ((np.nan,), (np.nan,))
        rows.append({"quantity": name, "estimate": estimates[name], "ci_low": float(lo[0]), "ci_high": float(hi[0]),
                     "n_levels": levels[name], "n_patients": people[name]})  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
