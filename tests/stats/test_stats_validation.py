"""analyze() against independent oracles (scipy, statsmodels, pandas by hand) and robustness on awkward data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from stats_builders import analysis_table_with_gap, settings, vendor_axis
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttest_ind, ttost_ind

from audit.protocol import AcceptanceCriterion, AdjustedModelSettings, SubgroupSettings
from audit.stats import analyze, compare_models
from audit.stats.adjusted import confounding_warnings
from audit.stats.gaps import holm

HIGHER = {"dice": True, "hd95": False, "rel_volume_error": False}
VB = "vertebral_body"


def run(table, metric="dice", **kw):
    kw.setdefault("statistics", settings())
    kw.setdefault("subgroups", vendor_axis())
    return analyze(table, structures=(VB,), metrics=(metric,), higher_is_better=HIGHER, **kw)


def patient_means(table: pd.DataFrame, group: str) -> np.ndarray:
    sub = table[table["vendor"] == group]
    return sub.groupby("patient_id")["value"].mean().to_numpy()


def test_welch_and_tost_use_patient_means_and_match_statsmodels():
    """Repeated exams: the test unit is the patient mean (computed here with pandas), not the case."""
    table = analysis_table_with_gap(25, gap=0.01, exams_per_patient=(1, 2, 3), patient_sd=0.02, seed=21)
    res = run(table, statistics=settings(equivalence_margins={"dice": 0.03}))
    gap = res.gaps[res.gaps["comparison"] == "vs_reference"].iloc[0]
    x, y = patient_means(table, gap["group"]), patient_means(table, gap["reference"])
    stat, p, _ = ttest_ind(x, y, usevar="unequal")
    np.testing.assert_allclose([gap["statistic"], gap["p_value"]], [stat, p], rtol=1e-10)
    eq = res.equivalence.iloc[0]
    np.testing.assert_allclose(eq["p_tost"], ttost_ind(x, y, -0.03, 0.03, usevar="unequal")[0], rtol=1e-10)


def test_mann_whitney_for_distance_metric_matches_scipy_on_patient_means():
    table = analysis_table_with_gap(20, gap=-1.5, exams_per_patient=(1, 2), base=4.0, sd=1.0, metric="hd95", seed=22)
    res = run(table, metric="hd95")
    gap = res.gaps[res.gaps["comparison"] == "vs_reference"].iloc[0]
    assert gap["test"] == "mann_whitney"
    ref = sps.mannwhitneyu(patient_means(table, gap["group"]), patient_means(table, gap["reference"]), alternative="two-sided")
    np.testing.assert_allclose([gap["statistic"], gap["p_value"]], [ref.statistic, ref.pvalue], rtol=1e-12)


def test_family_adjustment_matches_multipletests_over_the_whole_run():
    table = analysis_table_with_gap(15, gap=0.02, groups=("A", "B", "C", "D"), seed=23)
    table = pd.concat([table, table.assign(structure="intervertebral_disc", value=table["value"] - 0.01)], ignore_index=True)
    res = analyze(table, structures=(VB, "intervertebral_disc"), metrics=("dice",), higher_is_better=HIGHER,
                  subgroups=SubgroupSettings(columns=("vendor", "sex"), intersections=()), statistics=settings(multiplicity="fdr_bh"))  # fmt: skip
    tested = res.gaps[res.gaps["p_value"].notna()]
    assert len(tested) == res.settings["family_size"] == 2 * (3 + 1) + 2 * (1 + 1)  # (groups-1 + omnibus) per axis x structure
    np.testing.assert_allclose(tested["p_holm"], multipletests(tested["p_value"], method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(tested["p_adjusted"], multipletests(tested["p_value"], method="fdr_bh")[1], rtol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 7, 40])
def test_holm_equals_statsmodels_including_ties_and_the_cap(m):
    rng = np.random.default_rng(m)
    p = np.concatenate([rng.uniform(0, 0.2, m), [0.01, 0.01, 0.9, 1.0, 0.0]])  # ties, values that cap at 1, a zero
    rng.shuffle(p)
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
    assert holm(np.array([])).size == 0


def test_planted_gap_detected_in_most_replicates():
    """Gap 0.03 Dice, SD 0.03, 30 patients per group: Welch power ~0.97; require >= 85% of 30 replicates."""
    hits = sum(bool(run(analysis_table_with_gap(30, gap=0.03, seed=500 + s), statistics=settings(bootstrap_iterations=100))
                    .gaps.query("comparison == 'vs_reference'")["significant"].iloc[0]) for s in range(30))  # fmt: skip
    assert hits >= 26, hits


def test_signed_metric_failure_rate_uses_absolute_value_and_counts_infinite():
    """rel_volume_error A: -0.3, 0.05, 0.1, +inf (false positive) with threshold 0.2 -> 2 failures of 4."""
    rows = [dict(case_id=f"c{i}", patient_id=f"p{i}", site="s", vendor="A", structure=VB, metric="rel_volume_error", value=v, status=st)
            for i, (v, st) in enumerate([(-0.3, "ok"), (0.05, "ok"), (0.1, "ok"), (np.inf, "false_positive")])]  # fmt: skip
    res = run(pd.DataFrame(rows), metric="rel_volume_error",
              statistics=settings(min_group_size=2, failure_thresholds={"rel_volume_error": 0.2}))  # fmt: skip
    row = res.overall.iloc[0]
    assert row["failure_rate"] == 0.5 and row["n_nonfinite"] == 1 and row["n_cases"] == 3
    np.testing.assert_allclose([row["failure_ci_low"], row["failure_ci_high"]], proportion_confint(2, 4, alpha=0.05, method="wilson"), atol=1e-12)
    np.testing.assert_allclose(row["mean"], (-0.3 + 0.05 + 0.1) / 3)  # the mean is over finite values only


def test_signed_metric_worst_vs_best_ranks_by_absolute_mean():
    """A under-segments by 20% (mean -0.2), B over-segments by 5%: A is worst, the gap is |-0.2| - |0.05| = 0.15."""
    a = analysis_table_with_gap(20, groups=("A",), base=-0.2, sd=0.01, metric="rel_volume_error", seed=24)
    b = analysis_table_with_gap(20, groups=("B",), base=0.05, sd=0.01, metric="rel_volume_error", seed=25)
    res = run(pd.concat([a, b], ignore_index=True), metric="rel_volume_error")
    wvb = res.gaps[res.gaps["comparison"] == "worst_vs_best"].iloc[0]
    assert (wvb["group"], wvb["reference"]) == ("A", "B")
    expected = abs(a["value"].mean()) - abs(b["value"].mean())
    np.testing.assert_allclose(wvb["difference"], expected, rtol=1e-12)
    assert wvb["diff_ci_low"] <= expected <= wvb["diff_ci_high"] and wvb["diff_ci_low"] > 0


def test_worst_vs_best_ratio_has_interval():
    res = run(analysis_table_with_gap(30, gap=0.05, groups=("A", "B", "C"), seed=26))
    wvb = res.gaps[res.gaps["comparison"] == "worst_vs_best"].iloc[0]
    est = res.group_estimates.set_index("group")["mean"]
    np.testing.assert_allclose(wvb["ratio"], est["C"] / est.max(), rtol=1e-12)
    assert wvb["ratio_ci_low"] <= wvb["ratio"] <= wvb["ratio_ci_high"] < 1


def test_failure_rate_acceptance_uses_wilson_upper_bound():
    table = analysis_table_with_gap(40, groups=("A",), sd=0.05, seed=27)
    crit = (AcceptanceCriterion(id="fr", metric="dice", threshold=0.2, operator="<=", estimate="failure_rate", bound="upper"),)
    res = run(table, acceptance=crit, statistics=settings(failure_thresholds={"dice": 0.85}))
    fails = int((table["value"] < 0.85).sum())
    upper = proportion_confint(fails, len(table), alpha=0.05, method="wilson")[1]
    row = res.acceptance.iloc[0]
    np.testing.assert_allclose(row["value"], upper, atol=1e-12)
    assert row["status"] == ("pass" if upper <= 0.2 else "fail")


def test_compare_three_models_with_repeated_exams():
    """Patient-level differences by hand; Holm over the two comparisons matches multipletests."""
    base = analysis_table_with_gap(25, groups=("A",), exams_per_patient=(1, 2, 3), seed=28)
    rng = np.random.default_rng(3)
    tables = {"m0": base, "m1": base.assign(value=base["value"] + 0.01 + rng.normal(0, 0.01, len(base))),
              "m2": base.assign(value=base["value"] + rng.normal(0, 0.01, len(base)))}  # fmt: skip
    out = compare_models(tables, structures=(VB,), metrics=("dice",), statistics=settings()).set_index("other")
    for name in ("m1", "m2"):
        d = (tables[name]["value"] - base["value"]).groupby(base["patient_id"]).mean()
        np.testing.assert_allclose(out.loc[name, "p_value"], sps.wilcoxon(d.to_numpy()).pvalue, rtol=1e-10)
    np.testing.assert_allclose(out["p_holm"], multipletests(out["p_value"], method="holm")[1], rtol=1e-12)
    assert out.loc["m1", "ci_low"] > 0 and out.loc["m2", "ci_low"] < 0 < out.loc["m2", "ci_high"]
    with pytest.raises(ValueError, match="missing columns"):
        compare_models({"a": base, "b": base.drop(columns="patient_id")}, structures=(VB,), metrics=("dice",), statistics=settings())


def test_partly_nested_factor_is_named():
    df = pd.DataFrame({"site": ["s1", "s1", "s2", "s2", "s3"], "vendor": ["GE", "Siemens", "GE", "Siemens", "Philips"]})
    out = confounding_warnings(df, ["vendor"], "site")
    assert len(out) == 1 and "vendor is nested in site" in out[0] and "Philips (only at s3)" in out[0]


def test_rank_variant_for_skewed_metric():
    table = analysis_table_with_gap(20, gap=-2.0, groups=("A", "B"), base=3.0, sd=1.0, metric="hd95", seed=30)
    table["site"] = table["patient_id"].map(lambda p: f"s{int(p.split('-')[1]) % 4}")  # deterministic (str hash is salted)
    am = AdjustedModelSettings(enabled=True, metric="hd95", factors=("vendor",))
    res = run(table, metric="hd95", statistics=settings(adjusted_model=am))
    models = set(res.adjusted["model"])
    # a mixed model, or its documented OLS fallback when the site variance is estimated at zero
    linear = "mixedlm" if "mixedlm" in models else "ols"
    assert {linear, f"{linear}_rank"} <= models and not any(m.endswith("_logit") for m in models)
    rank = res.adjusted[(res.adjusted["model"] == f"{linear}_rank") & (res.adjusted["term"] == "vendor: B vs A")].iloc[0]
    assert rank["ci_low"] > 0  # B is 2 mm worse (higher) by construction


def degenerate_table() -> pd.DataFrame:
    """Identical scores, one site, a single-patient group, missing metadata, failed and infinite rows."""
    t = analysis_table_with_gap(6, groups=("A", "B"), sd=0.0, seed=31)
    t["site"] = "only-site"
    t.loc[0, "vendor"] = None
    t = pd.concat([t, analysis_table_with_gap(1, groups=("C",), seed=32)], ignore_index=True)
    hd = t.assign(metric="hd95", value=np.where(t.index % 5 == 0, np.inf, 2.0), status=np.where(t.index % 5 == 0, "missed", "ok"))
    t.loc[1, ["value", "status"]] = [np.nan, "failed"]
    return add_bands(pd.concat([t, hd], ignore_index=True))


def add_bands(t: pd.DataFrame) -> pd.DataFrame:
    from audit.stats import add_age_band

    return add_age_band(t.assign(race="Unknown", field_strength="3T"), (18, 40, 60, 75, 120))


def test_degenerate_data_raise_no_warning_and_serialize():
    """pytest turns every warning into an error: this run must stay silent and report its problems as notes."""
    crit = (AcceptanceCriterion(id="a", metric="dice", threshold=0.8, scope="vendor"),
            AcceptanceCriterion(id="g", metric="hd95", threshold=1.0, operator="<=", estimate="gap_worst_best", bound="upper", scope="vendor"))  # fmt: skip
    res = analyze(degenerate_table(), structures=(VB,), metrics=("dice", "hd95"), higher_is_better=HIGHER,
                  subgroups=SubgroupSettings(columns=("vendor", "sex", "race", "field_strength", "age_band"), intersections=(("vendor", "sex"),),
                                             reference_groups={"vendor": "Nope"}),
                  statistics=settings(bootstrap_method="bca", equivalence_margins={"dice": 0.03}, failure_thresholds={"hd95": 5.0},
                                      adjusted_model=AdjustedModelSettings(enabled=True, factors=("vendor", "age_years", "sex"))),
                  acceptance=crit)  # fmt: skip
    blob = json.dumps(res.to_dict(), allow_nan=False)
    assert "Nope" in blob and res.criteria["g"] == "inconclusive"
    assert any("reference_groups.vendor" in w for w in res.warnings) and any("failed" in w for w in res.warnings)
    c = res.group_estimates.query("axis == 'vendor' and group == 'C' and metric == 'dice'").iloc[0]
    assert bool(c["descriptive_only"]) and c["n_patients"] == 1
