"""Grading metrics against scikit-learn (the independent oracle) on hand-checkable and random data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import calibration
from sklearn import metrics as skm

from audit.grading import metrics as gm

TOL = 1e-12  # both sides are closed-form sums in float64


def random_grades(seed: int, n: int = 300, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference grades, noisy predicted grades and Dirichlet probabilities peaked at the predicted grade."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.clip(y + rng.integers(-1, 2, n), 0, k - 1)
    alpha = np.ones((n, k)) + 4.0 * np.eye(k)[pred]
    proba = np.array([rng.dirichlet(a) for a in alpha])
    return y, pred, proba


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
@pytest.mark.parametrize("weights", [None, "linear", "quadratic"], ids=["unweighted", "linear", "quadratic"])
def test_kappa_and_confusion_match_sklearn(seed, weights):
    y, pred, _ = random_grades(seed)
    cm = gm.confusion_matrix(y, pred, 3)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=[0, 1, 2]))
    assert gm.accuracy(cm) == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    assert gm.weighted_kappa(cm, weights) == pytest.approx(skm.cohen_kappa_score(y, pred, labels=[0, 1, 2], weights=weights), abs=1e-10)


def test_quadratic_kappa_by_hand():
    # C = [[1,1],[0,2]]: po weighted disagreement = 1/4; marginals rows (2,2), cols (1,3); E off-diagonal = (2*3 + 2*1)/4/4 = 1/2
    cm = np.array([[1, 1], [0, 2]])
    assert gm.weighted_kappa(cm, "quadratic") == pytest.approx(1 - 0.25 / 0.5)


def test_per_grade_and_binary_rates_match_sklearn():
    y, pred, _ = random_grades(3)
    cm = gm.confusion_matrix(y, pred, 3)
    per = gm.per_grade_sensitivity_specificity(cm)
    for g in range(3):
        assert per.loc[g, "sensitivity"] == pytest.approx(skm.recall_score(y == g, pred == g), abs=TOL)
        assert per.loc[g, "specificity"] == pytest.approx(skm.recall_score(y != g, pred != g), abs=TOL)
    r = gm.binary_rates(cm, 1)
    yb, pb = y >= 1, pred >= 1
    assert r["sensitivity"] == pytest.approx(skm.recall_score(yb, pb), abs=TOL)
    assert r["specificity"] == pytest.approx(skm.recall_score(~yb, ~pb), abs=TOL)
    assert r["ppv"] == pytest.approx(skm.precision_score(yb, pb), abs=TOL)
    assert r["npv"] == pytest.approx(skm.precision_score(~yb, ~pb), abs=TOL)


def test_undefined_rates_are_nan_not_errors():
    cm = gm.confusion_matrix(np.array([0, 0]), np.array([0, 1]), 3)
    assert np.isnan(gm.binary_rates(cm, 1)["sensitivity"])
    assert np.isnan(gm.per_grade_sensitivity_specificity(cm).loc[2, "sensitivity"])
    assert np.isnan(gm.auroc(np.array([1, 1]), np.array([0.2, 0.3])))


@pytest.mark.parametrize("seed", [4, 5], ids=["seed4", "seed5"])
def test_auroc_roc_brier_reliability_match_sklearn(seed):
    y, _, proba = random_grades(seed)
    yb = (y >= 1).astype(int)
    score = np.round(gm.positive_score(proba, 1), 2)  # rounding makes ties, the case rank formulas get wrong
    assert gm.auroc(yb, score) == pytest.approx(skm.roc_auc_score(yb, score), abs=1e-12)
    roc = gm.roc_points(yb, score)
    fpr, tpr, _ = skm.roc_curve(yb, score, drop_intermediate=False)
    np.testing.assert_allclose(roc["fpr"], fpr, atol=TOL)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=TOL)
    assert gm.brier_score(yb, score) == pytest.approx(skm.brier_score_loss(yb, score), abs=TOL)
    rel = gm.reliability_bins(yb, score, 10)
    prob_true, prob_pred = calibration.calibration_curve(yb, score, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(rel["observed"], prob_true, atol=1e-12)
    np.testing.assert_allclose(rel["mean_predicted"], prob_pred, atol=1e-12)
    assert rel["n"].sum() == yb.size


@pytest.mark.parametrize("seed", [6, 7], ids=["seed6", "seed7"])
def test_weighted_log_loss_matches_sklearn_with_rsna_weights(seed):
    y, _, proba = random_grades(seed)
    proba[0] = [1.0, 0.0, 0.0]  # a zero probability on a class: the clipping path
    w = np.array([1.0, 2.0, 4.0])[y]
    assert gm.weighted_log_loss(y, proba) == pytest.approx(skm.log_loss(y, proba, sample_weight=w, labels=[0, 1, 2]), rel=1e-12)


def test_weighted_log_loss_by_hand():
    # reference grades 0 and 2, both predicted (1/2, 1/4, 1/4): (1 * ln 2 + 4 * ln 4) / 5 = 9 ln 2 / 5
    proba = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    assert gm.weighted_log_loss(np.array([0, 2]), proba) == pytest.approx(9 * np.log(2) / 5, rel=1e-14)


def test_any_severe_log_loss_is_the_rsna_per_study_term():
    # the RSNA metric: label = max(severe) per study, prediction = max(p_severe), weight = max(level weight)
    rng = np.random.default_rng(8)
    table = pd.DataFrame({"case_id": np.repeat(["a", "b", "c", "d"], 5), "grade_ref": rng.integers(0, 3, 20), "p_2": rng.uniform(0.01, 0.99, 20)})
    g = table.assign(y=(table["grade_ref"] == 2).astype(int), w=np.array([1.0, 2.0, 4.0])[table["grade_ref"]]).groupby("case_id")
    expected = skm.log_loss(g["y"].max(), g["p_2"].max(), sample_weight=g["w"].max(), labels=[0, 1])
    assert gm.any_severe_log_loss(table) == pytest.approx(expected, rel=1e-12)


def test_grade_codes_out_of_range_name_the_argument():
    with pytest.raises(ValueError, match=r"y_pred: must be a 1-D array of grade codes 0..2"):
        gm.confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
