"""Gap tests, Holm/BH adjustment and TOST of the grading rates (audit/grading/gaps.py), recomputed independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from grading_builders import null_paired_cohort, two_proportion_cohort
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats import proportion

from audit.grading.fairness import RATES, GradingCriterion, RateDraws, bootstrap_rate_draws
from audit.grading.gaps import adjust_grading_gaps, pre_specified_pairs, rate_gaps, reference_group
from audit.stats.families import EXPLORATORY, PRE_SPECIFIED
from audit.stats.gaps import GAP_COLUMNS


def test_demo_gaps_pvalues_and_adjustment_match_statsmodels(grading_demo):
    _, doc, _, paired = grading_demo
    gaps = pd.DataFrame(doc["gaps"]["rows"])
    assert list(gaps.columns) == list(GAP_COLUMNS) and doc["gaps"]["multiplicity"] == "holm"
    # every rate x non-reference group of vendor (4 groups, reference the largest, tie -> first sorted) and sex
    assert len(gaps) == len(RATES) * (3 + 1) and set(gaps.loc[gaps["axis"] == "vendor", "reference"]) == {"Canon"}
    assert set(gaps.loc[gaps["axis"] == "sex", "reference"]) == {paired.groupby("sex")["patient"].nunique().idxmax()}
    # the difference is the pandas rate difference; p = 2 P(Z >= |z|) (scipy)
    pos, pred = paired["grade_ref"] >= 1, paired["grade_model"] >= 1
    for r in gaps[gaps["metric"] == "fpr"].itertuples():
        fpr = {g: (pred & ~pos)[paired[r.axis] == g].sum() / (~pos)[paired[r.axis] == g].sum() for g in (r.group, r.reference)}
        assert r.difference == pytest.approx(fpr[r.group] - fpr[r.reference], abs=1e-12)
        assert r.p_value == pytest.approx(2 * stats.norm.sf(abs(r.statistic)), rel=1e-9)
        assert r.diff_ci_low <= r.difference <= r.diff_ci_high
    # Holm and BH within each family, as statsmodels' multipletests
    for family, sub in gaps.groupby("family"):
        np.testing.assert_allclose(sub["p_holm"], multipletests(sub["p_value"], method="holm")[1], rtol=1e-12)
        np.testing.assert_allclose(sub["p_fdr_bh"], multipletests(sub["p_value"], method="fdr_bh")[1], rtol=1e-12)
        np.testing.assert_array_equal(sub["significant"], sub["p_holm"] < 0.05)
    # the criteria name severe sensitivity by vendor and the equalized-odds difference (TPR, FPR) by sex
    pre = gaps[gaps["family"] == PRE_SPECIFIED]
    assert set(zip(pre["axis"], pre["metric"])) == {("vendor", "severe_sensitivity"), ("sex", "tpr"), ("sex", "fpr")}
    # planted effects: Philips under-calls severe, F over-calls >= moderate (FPR); both survive Holm
    philips = gaps[(gaps["group"] == "Philips") & (gaps["metric"] == "severe_sensitivity")].iloc[0]
    female_fpr = gaps[(gaps["axis"] == "sex") & (gaps["metric"] == "fpr")].iloc[0]
    assert philips.difference < -0.25 and philips.p_holm < 1e-4
    assert abs(female_fpr.difference) > 0.1 and female_fpr.p_holm < 1e-4


def test_demo_tost_follows_the_interval_and_the_hand_formula(grading_demo):
    _, doc, _, _ = grading_demo
    eq = pd.DataFrame(doc["equivalence"]["rows"])
    gaps = pd.DataFrame(doc["gaps"]["rows"]).set_index(["axis", "group", "metric"])
    assert doc["equivalence"]["margins"] == {"tpr": 0.1, "fpr": 0.1, "severe_sensitivity": 0.15}
    for r in eq.itertuples():
        g = gaps.loc[(r.axis, r.group, r.metric)]
        se = g.difference / g.statistic  # the bootstrap SE behind z
        hand = max(stats.norm.sf((r.difference + r.margin) / se), stats.norm.cdf((r.difference - r.margin) / se))
        assert r.p_tost == pytest.approx(hand, rel=1e-9)
        assert r.equivalent == (-r.margin < r.ci_low and r.ci_high < r.margin)
    # the F-M FPR gap (planted, about 0.14) is not equivalent within 0.1; Philips' severe sensitivity not within 0.15
    assert not eq[(eq["axis"] == "sex") & (eq["metric"] == "fpr")]["equivalent"].any()
    assert not eq[(eq["group"] == "Philips") & (eq["metric"] == "severe_sensitivity")]["equivalent"].any()


def planted_draws(seed: int = 0) -> RateDraws:
    """Hand-made draws: group a (reference, 50 patients) and b (40) with normal bootstrap draws around known rates."""
    rng = np.random.default_rng(seed)
    point = pd.DataFrame({"group": ["a", "b"], "n_patients": [50, 40], "n_levels": [200, 160]})
    est = {"a": [0.30, 0.80, 0.10, 0.90], "b": [0.34, 0.70, 0.12, 0.88]}
    for k, r in enumerate(RATES):
        point[r] = [est["a"][k], est["b"][k]]
    draws = np.stack([np.array(est[g])[None, :] + rng.normal(0, [0.02, 0.03, 0.01, 0.04], size=(5000, 4)) for g in ("a", "b")], axis=1)
    return RateDraws(column="vendor", point=point, draws=draws)


def test_rate_gaps_on_hand_made_draws_match_numpy_and_scipy():
    d = planted_draws()
    gaps, eq = rate_gaps(d, level=0.95, alpha=0.05, min_group_size=10, margins={"tpr": 0.05, "fpr": 0.05})
    for k, r in enumerate(RATES):
        row = gaps[gaps["metric"] == r].iloc[0]
        diff = d.draws[:, 1, k] - d.draws[:, 0, k]
        se = np.std(diff, ddof=1)
        assert row.reference == "a" and row.group == "b"
        assert row.p_value == pytest.approx(2 * stats.norm.sf(abs(row.difference) / se), rel=1e-9)
        assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), rel=1e-12)
    tpr = eq[eq["metric"] == "tpr"].iloc[0]  # difference -0.10, SE 0.042, margin 0.05: z = -1.18, p_tost = 0.88
    fpr = eq[eq["metric"] == "fpr"].iloc[0]  # difference 0.02, SE ~0.014: 90% interval ~ (-0.003, 0.043) inside 0.05
    se_fpr = np.std(d.draws[:, 1, 2] - d.draws[:, 0, 2], ddof=1)
    assert fpr.p_tost == pytest.approx(max(stats.norm.sf((0.02 + 0.05) / se_fpr), stats.norm.cdf((0.02 - 0.05) / se_fpr)), rel=1e-9)
    assert fpr.equivalent and fpr.p_tost < 0.05 and not tpr.equivalent and tpr.p_tost == pytest.approx(stats.norm.sf(-0.05 / 0.03 / np.sqrt(2)), abs=0.01)
    # a small group is not tested: no p-value, no interval, no verdict
    small = RateDraws(column="vendor", point=d.point.assign(n_patients=[50, 5]), draws=d.draws)
    g2, e2 = rate_gaps(small, level=0.95, alpha=0.05, min_group_size=10, margins={"tpr": 0.05})
    assert g2["p_value"].isna().all() and (g2["status"] == "not tested").all() and not e2["equivalent"].any()


def test_reference_group_and_families():
    point = pd.DataFrame({"group": ["GE", "Siemens"], "n_patients": [30, 30]})
    assert reference_group(point) == "GE" and reference_group(point, "Siemens") == "Siemens" and reference_group(point, "Canon") == "GE"
    crit = [GradingCriterion(id="c", description="d", estimate="equalized_odds_difference", group_by="sex", bound="ci_high", operator="<=", threshold=0.1),
            GradingCriterion(id="s", description="d", estimate="severe_sensitivity", group_by="vendor")]  # fmt: skip
    assert pre_specified_pairs(crit) == {("sex", "tpr"), ("sex", "fpr"), ("vendor", "severe_sensitivity")}
    d = planted_draws()
    gaps = adjust_grading_gaps([rate_gaps(d, level=0.95, alpha=0.05, min_group_size=10, pre_specified={("vendor", "tpr")})[0]], method="fdr_bh", alpha=0.05)
    assert gaps.loc[gaps["metric"] == "tpr", "family"].tolist() == [PRE_SPECIFIED]
    assert gaps.loc[gaps["metric"] == "tpr", "p_holm"].iloc[0] == pytest.approx(gaps.loc[gaps["metric"] == "tpr", "p_value"].iloc[0])  # a family of one
    exp = gaps[gaps["family"] == EXPLORATORY]
    np.testing.assert_allclose(exp["p_adjusted"], multipletests(exp["p_value"], method="fdr_bh")[1], rtol=1e-12)


def test_bootstrap_wald_matches_the_two_proportion_wald_test():
    """One level per patient: the cluster-bootstrap SE of a TPR gap is the binomial SE, so z matches statsmodels'
    two-sample Wald statistic. Monte Carlo SE of the bootstrap SD at B = 4,000 is about 1.1%; tolerance 5%."""
    paired = two_proportion_cohort(3)
    d = bootstrap_rate_draws(paired, "group", positive_from=1, severe=2, n_resamples=4000, seed=1)
    gaps, _ = rate_gaps(d, level=0.95, alpha=0.05, min_group_size=10)
    row = gaps[gaps["metric"] == "tpr"].iloc[0]
    x = paired.groupby("group")["grade_model"].agg(["sum", "size"])
    ref = proportion.test_proportions_2indep(x.loc["b", "sum"], x.loc["b", "size"], x.loc["a", "sum"], x.loc["a", "size"], method="wald", compare="diff")
    assert row.group == "b" and row.reference == "a"
    assert row.statistic == pytest.approx(ref.statistic, rel=0.05)
    assert row.p_value == pytest.approx(ref.pvalue, rel=0.5, abs=1e-4)  # p of z ~ 4 is steep in z


def test_type_one_error_under_a_planted_null():
    """100 cohorts without any group effect (levels correlated within patients): each rate's gap is rejected at
    0.05 in about 5% of cohorts. Monte Carlo SE per rate sqrt(0.05 * 0.95 / 100) = 2.2%; pooled over the four
    rates (correlated) 1.1-2.2%. Bounds: pooled rate in [0.02, 0.09]; Holm's family-wise rate <= 0.10 (measured:
    pooled 0.045 here, family-wise 0.02; 0.051 and 0.03 at 200 cohorts and 400 resamples)."""
    p, p_holm = [], []
    for seed in range(100):
        d = bootstrap_rate_draws(null_paired_cohort(seed), "group", positive_from=1, severe=2, n_resamples=300, seed=seed)
        gaps = adjust_grading_gaps([rate_gaps(d, level=0.95, alpha=0.05, min_group_size=10, pre_specified={("group", r) for r in RATES})[0]],
                                   method="holm", alpha=0.05)  # fmt: skip
        p.append(gaps["p_value"].to_numpy())
        p_holm.append(gaps["p_holm"].min())
    rejected = (np.array(p) < 0.05).mean()
    assert 0.02 <= rejected <= 0.09, rejected
    assert (np.array(p_holm) < 0.05).mean() <= 0.10, np.mean(np.array(p_holm) < 0.05)
