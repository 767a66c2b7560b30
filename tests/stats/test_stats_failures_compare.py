"""Failed cases count in acceptance criteria (issue 11), and the paired-comparison options (issue 12)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from stats_builders import analysis_table_with_gap, settings, vendor_axis
from statsmodels.stats.multitest import multipletests

from audit.protocol import AcceptanceCriterion, ProtocolError, protocol_from_dict
from audit.stats import analyze, compare_models
from audit.stats.compare import WILCOXON_ZERO_METHOD

VB = "vertebral_body"
HIGHER = {"dice": True, "hd95": False}
OVERALL = (AcceptanceCriterion(id="overall", metric="dice", threshold=0.80),)


def cohort_with_failed_hard_site(n_failed: int = 10) -> pd.DataFrame:
    """Three good sites (Dice about 0.88) and a hard site (about 0.70) whose first ``n_failed`` cases failed."""
    good = analysis_table_with_gap(30, groups=("A",), seed=60, sd=0.02)
    hard = analysis_table_with_gap(12, groups=("A",), seed=61, base=0.70, sd=0.02).assign(site="hard")
    hard["case_id"] = "hard-" + hard["case_id"]
    hard["patient_id"] = "hard-" + hard["patient_id"]
    hard.loc[hard.index[:n_failed], ["value", "status"]] = [np.nan, "failed"]
    return pd.concat([good, hard], ignore_index=True)


def run(table, policy="worst_value", acceptance=OVERALL):
    return analyze(table, structures=(VB,), metrics=("dice",), higher_is_better=HIGHER, subgroups=vendor_axis(),
                   statistics=settings(failure_policy=policy), acceptance=acceptance)  # fmt: skip


def test_failed_hard_site_cannot_turn_a_failing_criterion_into_a_pass():
    """Issue 11: removing the hard site's predictions flipped overall Dice FAIL to PASS. Complete case (10 of 12
    hard cases failed) passes; the default policy scores them at Dice 0 and fails, showing the complete-case value."""
    table = cohort_with_failed_hard_site()
    complete = run(table, policy="complete_case")
    worst = run(table)
    assert complete.criteria == {"overall": "pass"} and worst.criteria == {"overall": "fail"}
    row = worst.acceptance.iloc[0]
    assert row["status_complete_case"] == "pass" and row["value_complete_case"] == pytest.approx(complete.acceptance["value"].iloc[0])
    assert row["value"] < row["value_complete_case"] and f"complete case: {row['value_complete_case']:.4g}, pass" in row["reason"]
    assert any("failure_policy worst_value" in w for w in worst.warnings) and worst.settings["failure_policy"] == "worst_value"
    # the descriptive tables stay complete-case and count the failures
    assert worst.overall["n_failed"].iloc[0] == 10 and worst.overall["mean"].iloc[0] == pytest.approx(complete.overall["mean"].iloc[0])


@pytest.mark.parametrize("seed", range(6))
def test_criteria_never_improve_when_cases_fail(seed):
    """Random failures, several criterion kinds: the status under the policy is never better than without the
    failed cases (complete case) and never better than before those cases failed (all cases scored)."""
    rank = {"pass": 0, "inconclusive": 1, "fail": 2}
    rng = np.random.default_rng(seed)
    full = analysis_table_with_gap(15, gap=0.02, seed=70 + seed, sd=0.04)
    crits = (AcceptanceCriterion(id="mean", metric="dice", threshold=0.86),
             AcceptanceCriterion(id="group", metric="dice", threshold=0.84, scope="vendor"),
             AcceptanceCriterion(id="gap", metric="dice", threshold=0.06, operator="<=", estimate="gap_worst_best", bound="upper", scope="vendor"))  # fmt: skip
    failed = full.copy()
    idx = rng.choice(failed.index, size=4, replace=False)
    failed.loc[idx, ["value", "status"]] = [np.nan, "failed"]
    before = run(full, acceptance=crits).criteria
    policy = run(failed, acceptance=crits)
    for cid, status in policy.criteria.items():
        assert rank[status] >= rank[before[cid]], (cid, status, before[cid])
    for row in policy.acceptance.itertuples():
        assert rank[row.status] >= rank[row.status_complete_case]


def test_distance_failures_score_the_worst_observed_value_and_the_policy_is_validated():
    table = cohort_with_failed_hard_site(2).assign(metric="hd95")
    table["value"] = np.where(table["status"] == "ok", 20 - 20 * table["value"], np.nan)  # a distance, worst = largest
    crit = (AcceptanceCriterion(id="hd", metric="hd95", threshold=5.0, operator="<=", bound="point"),)
    res = analyze(table, structures=(VB,), metrics=("hd95",), higher_is_better=HIGHER, subgroups=vendor_axis(), statistics=settings(), acceptance=crit)
    ok = table[table["status"] == "ok"]["value"]
    expected = (ok.sum() + 2 * ok.max()) / (len(ok) + 2)
    assert res.acceptance["value"].iloc[0] == pytest.approx(expected, rel=1e-12)
    base = {"name": "x", "version": "1", "model": {"kind": "predictions"}, "structures": [VB], "synthetic_cohort": {}}
    with pytest.raises(ProtocolError, match=r"statistics.failure_policy: allowed values are \['worst_value', 'complete_case'\]; found 'drop'"):
        protocol_from_dict({**base, "statistics": {"failure_policy": "drop"}})


def test_wilcoxon_zero_differences_follow_pratt_and_are_counted():
    """Many tied scores (HD95 equal for both models on half the cases): Pratt's rule, as scipy computes it on
    pandas patient-level differences; it differs from dropping the zeros (Wilcoxon's rule)."""
    a = analysis_table_with_gap(40, groups=("A",), seed=80)
    rng = np.random.default_rng(81)
    shift = np.where(np.arange(len(a)) % 2 == 0, 0.0, rng.normal(0.01, 0.02, len(a)))
    b = a.assign(value=a["value"] + shift)
    row = compare_models({"a": a, "b": b}, structures=(VB,), metrics=("dice",), statistics=settings()).iloc[0]
    diff = (b["value"] - a["value"]).groupby(a["patient_id"]).mean().to_numpy()
    assert WILCOXON_ZERO_METHOD == "pratt" and row["n_zero"] == int((diff == 0).sum()) == 20
    pratt, wilcox = sps.wilcoxon(diff, zero_method="pratt").pvalue, sps.wilcoxon(diff, zero_method="wilcox").pvalue
    assert row["p_value"] == pytest.approx(pratt, rel=1e-10) and pratt != pytest.approx(wilcox, rel=1e-3)


def test_all_pairs_option_compares_every_pair_with_holm_over_all():
    base = analysis_table_with_gap(20, groups=("A",), seed=82)
    rng = np.random.default_rng(83)
    tables = {f"m{i}": base.assign(value=base["value"] + 0.01 * i + rng.normal(0, 0.01, len(base))) for i in range(4)}
    out = compare_models(tables, structures=(VB,), metrics=("dice",), statistics=settings(), pairs="all")
    assert list(zip(out["baseline"], out["other"])) == [("m0", "m1"), ("m0", "m2"), ("m0", "m3"), ("m1", "m2"), ("m1", "m3"), ("m2", "m3")]
    np.testing.assert_allclose(out["p_holm"], multipletests(out["p_value"], method="holm")[1], rtol=1e-12)
    with pytest.raises(ValueError, match=r"pairs: allowed values are \['baseline', 'all'\]; found 'some'"):
        compare_models(tables, structures=(VB,), metrics=("dice",), statistics=settings(), pairs="some")
