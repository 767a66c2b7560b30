"""analyze(): estimates against pandas, planted gaps found, nulls controlled, coverage near nominal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from stats_builders import analysis_table_with_gap, settings, vendor_axis

from audit.protocol import AcceptanceCriterion, AdjustedModelSettings, SubgroupSettings
from audit.stats import add_age_band, analyze
from audit.stats.groups import group_result, prepare

HIGHER = {"dice": True, "hd95": False}


def run(table, **kw):
    kw.setdefault("statistics", settings())
    kw.setdefault("subgroups", vendor_axis())
    return analyze(table, structures=("vertebral_body",), metrics=("dice",), higher_is_better=HIGHER, **kw)


def test_group_means_sd_median_match_pandas():
    table = analysis_table_with_gap(30, gap=0.02, exams_per_patient=(1, 2, 3), seed=2)
    res = run(table)
    est = res.group_estimates.set_index("group")
    ref = table.groupby("vendor")["value"].agg(["mean", "median", "std", "size"])
    np.testing.assert_allclose(est.loc[ref.index, "mean"], ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(est.loc[ref.index, "median"], ref["median"], rtol=1e-12)
    np.testing.assert_allclose(est.loc[ref.index, "sd"], ref["std"], rtol=1e-12)
    assert (est.loc[ref.index, "n_cases"] == ref["size"]).all()
    assert (est["n_patients"] == 30).all()


def test_failed_and_both_empty_are_counted_not_averaged():
    table = analysis_table_with_gap(10, seed=3)
    table.loc[0, ["value", "status"]] = [np.nan, "failed"]
    table.loc[1, ["value", "status"]] = [np.nan, "both_empty"]
    table.loc[2, ["value", "status"]] = [np.inf, "false_positive"]
    res = run(table, statistics=settings(min_group_size=2))
    a = res.group_estimates.set_index("group").loc["A"]
    assert (a["n_failed"], a["n_both_empty"], a["n_nonfinite"], a["n_cases"]) == (1, 1, 1, 7)
    np.testing.assert_allclose(a["mean"], table.loc[3:9, "value"].mean())
    assert any("failed" in w for w in res.warnings) and any("non-finite" in w for w in res.warnings)


def test_planted_gap_is_detected_with_interval_excluding_zero():
    res = run(analysis_table_with_gap(40, gap=0.04, seed=5))
    gap = res.gaps[(res.gaps["comparison"] == "vs_reference")].iloc[0]
    assert gap["group"] == "B" and gap["reference"] == "A"  # equal sizes: the reference is chosen deterministically
    assert gap["diff_ci_high"] < 0 and gap["p_adjusted"] < 0.001 and gap["significant"]
    np.testing.assert_allclose(gap["difference"], -0.04, atol=0.015)


def test_null_family_wise_error_rate_at_most_alpha():
    """Five groups, no planted effect, through the whole analyze(): P(any Holm-adjusted rejection) <= alpha within
    3 Monte Carlo SE (60 runs; the tight bound, <= 0.06 over 1500 replicates, is in test_stats_simulation.py)."""
    reps, rejections = 60, 0
    for seed in range(reps):
        table = analysis_table_with_gap(12, gap=0.0, groups=("A", "B", "C", "D", "E"), seed=1000 + seed)
        res = run(table, statistics=settings(bootstrap_iterations=100))
        rejections += bool(res.gaps["significant"].any())
    rate = rejections / reps
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps), rate


def test_cluster_bootstrap_coverage_near_nominal():
    """Clustered data (patient effect, 1-3 exams): the 90% interval covers the true mean about 90% of the time."""
    truth, reps, covered = 0.88, 200, 0
    for seed in range(reps):
        table = analysis_table_with_gap(25, groups=("A",), seed=seed, exams_per_patient=(1, 2, 3), patient_sd=0.03, sd=0.02, base=truth)
        prepared = prepare(table, structures=("vertebral_body",), metrics=("dice",))
        g = group_result(prepared, np.ones(len(prepared.cases), bool), axis="x", group="A", level=0.90, method="percentile", n_resamples=300,
                         rng=np.random.default_rng(seed), min_group_size=2, failure_thresholds={}, higher_is_better=HIGHER)  # fmt: skip
        row = g.table.iloc[0]
        covered += row["ci_low"] <= truth <= row["ci_high"]
    coverage = covered / reps
    assert 0.90 - 3 * np.sqrt(0.09 / reps) - 0.02 <= coverage <= 0.90 + 3 * np.sqrt(0.09 / reps), coverage


def test_small_groups_are_descriptive_only_and_untested():
    table = pd.concat([analysis_table_with_gap(20, seed=1), analysis_table_with_gap(3, groups=("Tiny",), seed=2)])
    res = run(table, statistics=settings(min_group_size=5))
    tiny = res.group_estimates.set_index("group").loc["Tiny"]
    assert bool(tiny["descriptive_only"]) and np.isfinite(tiny["mean"])  # reported, flagged, not merged
    row = res.gaps[(res.gaps["group"] == "Tiny")].iloc[0]
    assert np.isnan(row["p_value"]) and not row["significant"]
    assert any("descriptive only" in w for w in res.warnings)


def test_equivalence_within_margin_and_not():
    close = run(analysis_table_with_gap(60, gap=0.0, sd=0.02, seed=8), statistics=settings(equivalence_margins={"dice": 0.03}))
    far = run(analysis_table_with_gap(60, gap=0.05, sd=0.02, seed=8), statistics=settings(equivalence_margins={"dice": 0.03}))
    assert bool(close.equivalence["equivalent"].iloc[0]) and close.equivalence["p_tost"].iloc[0] < 0.05
    assert not bool(far.equivalence["equivalent"].iloc[0])


def test_acceptance_pass_fail_inconclusive():
    table = pd.concat([analysis_table_with_gap(30, gap=0.1, seed=4), analysis_table_with_gap(3, groups=("Tiny",), seed=2)])
    crits = (
        AcceptanceCriterion(id="overall", metric="dice", threshold=0.80),
        AcceptanceCriterion(id="vendor", metric="dice", threshold=0.85, scope="vendor"),
    )
    res = run(table, acceptance=crits, statistics=settings(min_group_size=5))
    assert res.criteria == {"overall": "pass", "vendor": "fail"}
    vendor = res.acceptance[res.acceptance["id"] == "vendor"].set_index("group")["status"].to_dict()
    assert vendor == {"A": "pass", "B": "fail", "Tiny": "inconclusive"}
    est = res.group_estimates.set_index("group")
    np.testing.assert_allclose(res.acceptance.set_index(["id", "group"]).loc[("vendor", "A"), "value"], est.loc["A", "ci_low"])


def test_worst_best_gap_criterion_uses_upper_bound():
    table = analysis_table_with_gap(40, gap=0.06, seed=6)
    crit = (AcceptanceCriterion(id="gap", metric="dice", threshold=0.05, operator="<=", estimate="gap_worst_best", bound="upper", scope="vendor"),)
    res = run(table, acceptance=crit)
    row = res.acceptance.iloc[0]
    wvb = res.gaps[res.gaps["comparison"] == "worst_vs_best"].iloc[0]
    assert row["status"] == "fail" and row["value"] == pytest.approx(max(abs(wvb["diff_ci_low"]), abs(wvb["diff_ci_high"])))
    assert wvb["group"] == "B" and wvb["reference"] == "A"


def test_intersections_and_age_bands():
    table = add_age_band(analysis_table_with_gap(20, seed=9), (18, 40, 60, 120))
    res = run(table, subgroups=SubgroupSettings(columns=("vendor", "age_band"), intersections=(("vendor", "sex"),)))
    groups = set(res.group_estimates.loc[res.group_estimates["axis"] == "vendor x sex", "group"])
    assert groups == {"A x F", "A x M", "B x F", "B x M"}
    assert set(table["age_band"]) <= {"18-39", "40-59", "60+"}


def test_add_age_band_edges_and_missing():
    """Left-closed bands; missing, non-numeric and out-of-range ages (< 18 or >= 120) are Unknown, never dropped."""
    df = pd.DataFrame({"age_years": [17.0, 18.0, 39.9, 40.0, 74.0, 75.0, np.nan, 99.0, 120.0, "n/a"]})
    out = add_age_band(df, (18, 40, 60, 75, 120))
    assert out["age_band"].tolist() == ["Unknown", "18-39", "18-39", "40-59", "60-74", "75+", "Unknown", "75+", "Unknown", "Unknown"]
    assert "age_band" not in df.columns  # the input is not modified
    with pytest.raises(ValueError, match="strictly increasing"):
        add_age_band(df, (40, 18))


def test_adjusted_model_recovers_planted_vendor_effect_and_warns_on_nesting():
    rng = np.random.default_rng(11)
    rows = []
    for site in range(6):
        site_effect = rng.normal(0, 0.01)
        for p in range(30):
            vendor = "B" if p % 2 else "A"  # vendors crossed with sites: effect identifiable
            value = 0.9 - 0.04 * (vendor == "B") - 0.001 * (p % 40) + site_effect + rng.normal(0, 0.02)
            rows.append(dict(case_id=f"{site}-{p}", patient_id=f"{site}-{p}", site=f"s{site}", vendor=vendor, age_years=float(p % 40),
                             structure="vertebral_body", metric="dice", value=value, status="ok"))  # fmt: skip
    table = pd.DataFrame(rows)
    res = run(table, statistics=settings(adjusted_model=AdjustedModelSettings(enabled=True, factors=("vendor", "age_years"))))
    linear = res.adjusted[res.adjusted["model"] == "mixedlm"].set_index("term")
    effect = linear.loc["vendor: B vs A"]
    assert effect["ci_low"] < -0.04 < effect["ci_high"] and effect["estimate"] == pytest.approx(-0.04, abs=0.01)
    assert linear.loc["age_years (per unit)", "estimate"] == pytest.approx(-0.001, abs=0.0005)
    assert (res.adjusted["model"] == "mixedlm_logit").any()
    nested = table.assign(vendor=np.where(table["site"].isin(["s0", "s1", "s2"]), "A", "B"))
    res2 = run(nested, statistics=settings(adjusted_model=AdjustedModelSettings(enabled=True, factors=("vendor", "age_years"))))
    assert any("vendor is nested in site" in w for w in res2.warnings)
