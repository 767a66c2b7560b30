"""Second review: exact failure intervals, Unknown parts of intersections, small groups in gap criteria,
missing patient ids, and the sparse patient variance component against a direct statsmodels fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from stats_builders import analysis_table_with_gap, settings, vendor_axis
from statsmodels.stats.proportion import proportion_confint

from audit.protocol import AcceptanceCriterion, AdjustedModelSettings, SubgroupSettings
from audit.stats import analyze
from audit.stats.intervals import clopper_pearson_interval, proportion_interval

HIGHER = {"dice": True}
VB = "vertebral_body"


def run(table, **kw):
    kw.setdefault("statistics", settings())
    kw.setdefault("subgroups", vendor_axis())
    return analyze(table, structures=(VB,), metrics=("dice",), higher_is_better=HIGHER, **kw)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 250)], ids=["none", "some", "all", "large"])
def test_clopper_pearson_matches_statsmodels_beta(k, n):
    np.testing.assert_allclose(clopper_pearson_interval(k, n, 0.95), proportion_confint(k, n, alpha=0.05, method="beta"), atol=1e-10)


def test_failure_interval_choice_reaches_the_table_and_bad_name_is_named():
    table = analysis_table_with_gap(30, groups=("A",), sd=0.05, seed=40)
    res = run(table, statistics=settings(failure_thresholds={"dice": 0.85}), failure_interval="clopper_pearson")
    fails = int((table["value"] < 0.85).sum())
    row = res.overall.iloc[0]
    np.testing.assert_allclose([row["failure_ci_low"], row["failure_ci_high"]], proportion_confint(fails, 30, alpha=0.05, method="beta"), atol=1e-10)
    assert res.settings["failure_interval"] == "clopper_pearson"
    with pytest.raises(ValueError, match="failure_interval: allowed values are .* found 'wald'"):
        proportion_interval(1, 3, 0.95, method="wald")


def test_intersection_with_unknown_part_is_never_reference_or_worst():
    """'Unknown x M' is the largest and by far the worst cell: still neither the reference nor the worst group."""
    known = analysis_table_with_gap(12, groups=("A",), seed=41)
    unknown = analysis_table_with_gap(30, groups=("Unknown",), base=0.5, seed=42)
    table = pd.concat([known, unknown], ignore_index=True)
    res = run(table, subgroups=SubgroupSettings(columns=("vendor",), intersections=(("vendor", "sex"),)))
    inter = res.gaps[res.gaps["axis"] == "vendor x sex"]
    assert set(inter["reference"]) <= {"A x F", "A x M"}
    wvb = inter[inter["comparison"] == "worst_vs_best"].iloc[0]
    assert {wvb["group"], wvb["reference"]} == {"A x F", "A x M"}
    est = res.group_estimates.query("axis == 'vendor x sex'").set_index("group")
    assert not est.loc["Unknown x M", "is_reference"] and np.isfinite(est.loc["Unknown x M", "mean"])  # shown, not used


def test_gap_criterion_is_inconclusive_when_a_small_group_could_decide_it():
    """A and B (30 patients, no gap) pass a worst-best gap <= 0.05; a 3-patient group C makes it inconclusive,
    and a real gap between A and B still fails whatever C shows."""
    crit = (AcceptanceCriterion(id="gap", metric="dice", threshold=0.05, operator="<=", estimate="gap_worst_best", bound="upper", scope="vendor"),)
    small = analysis_table_with_gap(3, groups=("C",), seed=43)
    passing = analysis_table_with_gap(30, gap=0.0, sd=0.01, seed=44)
    assert run(passing, acceptance=crit).criteria == {"gap": "pass"}
    res = run(pd.concat([passing, small], ignore_index=True), acceptance=crit)
    assert res.criteria == {"gap": "inconclusive"} and "C" in res.acceptance["reason"].iloc[0]
    failing = analysis_table_with_gap(30, gap=0.1, sd=0.01, seed=44)
    assert run(pd.concat([failing, small], ignore_index=True), acceptance=crit).criteria == {"gap": "fail"}


def test_missing_patient_id_is_its_own_cluster_and_reported():
    table = analysis_table_with_gap(10, groups=("A",), seed=45)
    table.loc[:3, "patient_id"] = None
    res = run(table, statistics=settings(min_group_size=2))
    assert res.overall["n_patients"].iloc[0] == 10  # 6 named + 4 case-level clusters, never pooled into one
    assert any("without patient_id" in w for w in res.warnings)


@pytest.mark.parametrize("sparse_from", [10_000, 0], ids=["dense", "sparse"])
def test_repeated_exams_mixed_model_equals_direct_statsmodels_fit(sparse_from, monkeypatch):
    """Random site intercept plus a patient variance component (sparse design in ours, dense in the oracle)."""
    import statsmodels.formula.api as smf

    monkeypatch.setattr("audit.stats.adjusted._SPARSE_FROM", sparse_from)

    table = analysis_table_with_gap(30, gap=0.04, seed=46, exams_per_patient=(1, 2, 3), patient_sd=0.02)
    table["site"] = table["patient_id"].map(lambda p: f"s{int(p.split('-')[1]) % 4}")
    table["value"] += table["site"].map({"s0": 0.03, "s1": -0.03, "s2": 0.0, "s3": 0.015})  # a site effect to absorb
    res = run(table, statistics=settings(adjusted_model=AdjustedModelSettings(enabled=True, factors=("vendor",))))
    ref = table["vendor"].value_counts().idxmax()  # the largest level is the reference
    other = "B" if ref == "A" else "A"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the oracle fit may note a boundary variance; we compare numbers only
        direct = smf.mixedlm(f"value ~ C(vendor, Treatment({ref!r}))", table, groups=table["site"], re_formula="1",
                             vc_formula={"patient": "0 + C(patient_id)"}).fit(reml=True, method=["lbfgs", "powell"])  # fmt: skip
    linear = res.adjusted[res.adjusted["model"] == "mixedlm"]
    assert linear["term"].tolist() == ["Intercept", f"vendor: {other} vs {ref}"]
    np.testing.assert_allclose(linear["estimate"], direct.fe_params, rtol=1e-4, atol=1e-6)
    # the intercept's interval carries the site variance: it is wide only when the site intercept is in the model
    np.testing.assert_allclose(linear[["ci_low", "ci_high"]], direct.conf_int().iloc[:2], rtol=1e-3, atol=1e-5)
    assert direct.cov_re.iloc[0, 0] > 1e-4
    assert not any("Sparse" in w for w in res.warnings), res.warnings


def test_paired_comparison_counts_cases_it_cannot_pair():
    """Model b failed on 2 cases and lacks 1: those 3 are counted in n_unpaired, not compared."""
    from audit.stats import compare_models

    a = analysis_table_with_gap(20, groups=("A",), seed=47)
    b = a.assign(value=a["value"] + 0.01)
    b.loc[:1, ["value", "status"]] = [np.nan, "failed"]
    b = b.drop(index=2)
    row = compare_models({"a": a, "b": b}, structures=(VB,), metrics=("dice",), statistics=settings()).iloc[0]
    assert (row["n_cases"], row["n_unpaired"], row["n_patients"]) == (17, 3, 17)
    np.testing.assert_allclose(row["mean_difference"], 0.01, rtol=1e-9)
