"""Fairness differences against Fairlearn, the patient-cluster bootstrap against the delta method, criteria."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as flm

from audit.grading.fairness import GradingCriterion, bootstrap_group_rates, evaluate_grading_criteria, fairness_differences, group_rates


def clustered_levels(seed: int, n_patients: int = 150, levels: int = 5, groups: tuple[str, ...] = ("A", "B", "C")) -> pd.DataFrame:
    """Paired grades with a patient effect (levels within a patient correlate) and a patient-level group."""
    rng = np.random.default_rng(seed)
    group = rng.choice(groups, n_patients)
    frailty = rng.normal(0, 1, n_patients)
    rows = []
    for p in range(n_patients):
        latent = frailty[p] + rng.normal(0, 0.7, levels)
        ref = np.digitize(latent, [0.3, 1.3])
        pred = np.digitize(latent + rng.normal(0, 0.5, levels) + 0.3 * (group[p] == "C"), [0.3, 1.3])
        rows.append(pd.DataFrame({"patient_id": f"p{p}", "grade_ref": ref, "grade_model": pred, "group": group[p]}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("seed", [0, 1], ids=["seed0", "seed1"])
def test_differences_match_fairlearn(seed):
    paired = clustered_levels(seed)
    rates = group_rates(paired, "group", positive_from=1, severe=2)
    got = fairness_differences(rates)
    y, pred, groups = (paired["grade_ref"] >= 1).astype(int), (paired["grade_model"] >= 1).astype(int), paired["group"]
    assert got["demographic_parity_difference"] == pytest.approx(flm.demographic_parity_difference(y, pred, sensitive_features=groups), abs=1e-12)
    assert got["equalized_odds_difference"] == pytest.approx(flm.equalized_odds_difference(y, pred, sensitive_features=groups), abs=1e-12)
    frame = flm.MetricFrame(metrics={"tpr": flm.true_positive_rate, "fpr": flm.false_positive_rate, "sel": flm.selection_rate},
                            y_true=y, y_pred=pred, sensitive_features=groups).by_group  # fmt: skip
    np.testing.assert_allclose(rates.set_index("group")[["tpr", "fpr", "selection_rate"]].to_numpy(), frame[["tpr", "fpr", "sel"]].to_numpy(), atol=1e-12)


def delta_method_se(paired: pd.DataFrame, num: pd.Series, den: pd.Series) -> float:
    """Cluster (patient) delta-method SE of the ratio sum(num)/sum(den), the textbook survey-sampling formula."""
    per = pd.DataFrame({"p": paired["patient_id"], "a": num, "b": den}).groupby("p").sum()
    ratio = per["a"].sum() / per["b"].sum()
    n = len(per)
    return float(np.sqrt(n / (n - 1) * ((per["a"] - ratio * per["b"]) ** 2).sum()) / per["b"].sum())


def test_cluster_bootstrap_spread_matches_the_delta_method():
    # one group, so the bootstrap is unstratified; B = 4000 gives a Monte Carlo SE of the SD of ~1.1% (1/sqrt(2B))
    paired = clustered_levels(2, n_patients=200, groups=("A",))
    rates, _ = bootstrap_group_rates(paired, "group", positive_from=1, severe=2, n_resamples=4000, seed=3, level=0.6827)
    tpr = rates[rates["rate"] == "tpr"].iloc[0]
    pos = (paired["grade_ref"] >= 1).astype(float)
    se = delta_method_se(paired, pos * (paired["grade_model"] >= 1), pos)
    assert (tpr["ci_high"] - tpr["ci_low"]) / 2 == pytest.approx(se, rel=0.08)  # +/- 1 SD interval half-width


def test_levels_stay_together_inside_patients():
    # copying every level of a patient inside the same patient changes no ratio in any resample: identical intervals;
    # copying patients as new patients halves the variance (the interval shrinks by about 1/sqrt(2))
    paired = clustered_levels(4, n_patients=120)
    base, _ = bootstrap_group_rates(paired, "group", positive_from=1, severe=2, n_resamples=500, seed=5)
    within, _ = bootstrap_group_rates(pd.concat([paired, paired]), "group", positive_from=1, severe=2, n_resamples=500, seed=5)
    np.testing.assert_allclose(within[["estimate", "ci_low", "ci_high"]], base[["estimate", "ci_low", "ci_high"]], atol=1e-12)
    twins = pd.concat([paired, paired.assign(patient_id=paired["patient_id"] + "-twin")])
    more, _ = bootstrap_group_rates(twins, "group", positive_from=1, severe=2, n_resamples=2000, seed=5)
    width = lambda t: (t["ci_high"] - t["ci_low"]).to_numpy()  # noqa: E731
    base2, _ = bootstrap_group_rates(paired, "group", positive_from=1, severe=2, n_resamples=2000, seed=5)
    ratio = np.median(width(more) / width(base2))
    assert 0.6 < ratio < 0.82  # 1/sqrt(2) = 0.707; Monte Carlo spread of percentile widths at B = 2000 is a few percent


def rates_table(rows: list[tuple[str, str, float, float, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["group", "rate", "estimate", "ci_low", "ci_high", "n_patients"])


def test_criteria_pass_fail_inconclusive():
    rates = {"vendor": rates_table([("GE", "severe_sensitivity", 0.9, 0.85, 0.95, 40), ("Philips", "severe_sensitivity", 0.7, 0.6, 0.8, 40),
                                    ("Canon", "severe_sensitivity", 0.95, 0.9, 1.0, 5), ("Fuji", "severe_sensitivity", np.nan, np.nan, np.nan, 30)])}  # fmt: skip
    diffs = {"vendor": pd.DataFrame({"difference": ["equalized_odds_difference"], "estimate": [0.05], "ci_low": [0.01], "ci_high": [0.09]})}
    crits = [GradingCriterion(id="sens", description="d", estimate="severe_sensitivity", group_by="vendor", bound="ci_low", operator=">=", threshold=0.8),
             GradingCriterion(id="eod", description="d", estimate="equalized_odds_difference", group_by="vendor", bound="ci_high", operator="<=", threshold=0.1)]  # fmt: skip
    table, status = evaluate_grading_criteria(crits, rates, diffs, min_group_size=10)
    assert table.set_index("group").loc[["GE", "Philips", "Canon", "Fuji"], "status"].tolist() == ["pass", "fail", "inconclusive", "inconclusive"]
    assert status == {"sens": "fail", "eod": "pass"}


def test_criterion_names_allowed_values():
    with pytest.raises(ValueError, match=r"estimate: allowed values are \['selection_rate', 'tpr', 'fpr', 'severe_sensitivity'"):
        GradingCriterion(id="x", description="d", estimate="dice", group_by="vendor")


def test_criterion_on_an_absent_group_column_is_inconclusive():
    crit = GradingCriterion(id="sens", description="d", estimate="severe_sensitivity", group_by="vendor")
    table, status = evaluate_grading_criteria([crit], {}, {}, min_group_size=10)
    assert status == {"sens": "inconclusive"} and table["reason"].iloc[0] == "no 'vendor' column in the graded table"
