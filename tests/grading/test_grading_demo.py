"""`spine-audit demo --task grading` end to end: the planted effects are found and every reported number is
recomputed here with scikit-learn, Fairlearn and pandas from the run folder's input table (grades.csv)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as flm
from sklearn import calibration
from sklearn import metrics as skm
from typer.testing import CliRunner

from audit.cli import app
from audit.fileio import LockedError
from audit.grading.runner import GRADING_TABLES, REPORT_NAME, GradingAudit, run_grading, run_grading_table
from audit.grading.tables import read_long_table
from audit.runfolder import FAILURES, LOCK, RunFolder
from audit.grading.synthetic import SITES, UNDERCALL_SITE

TOL = 1e-9
PROBS = ["p_0", "p_1", "p_2"]


def sklearn_metrics(sub: pd.DataFrame) -> dict[str, float]:
    """Every metric name of the results table, from scikit-learn."""
    y, p = sub["grade_ref"].to_numpy(), sub["grade_model"].to_numpy()
    yb, pb = y >= 1, p >= 1
    score = sub[["p_1", "p_2"]].sum(axis=1).to_numpy()
    out = {"n_levels": len(sub), "n_patients": sub["patient"].nunique(), "accuracy": skm.accuracy_score(y, p),
           "kappa_linear": skm.cohen_kappa_score(y, p, labels=[0, 1, 2], weights="linear"),
           "kappa_quadratic": skm.cohen_kappa_score(y, p, labels=[0, 1, 2], weights="quadratic"),
           "sensitivity_binary": skm.recall_score(yb, pb, zero_division=np.nan), "specificity_binary": skm.recall_score(~yb, ~pb, zero_division=np.nan),
           "ppv_binary": skm.precision_score(yb, pb, zero_division=np.nan), "npv_binary": skm.precision_score(~yb, ~pb, zero_division=np.nan),
           "severe_sensitivity": skm.recall_score(y == 2, p == 2, zero_division=np.nan),
           "auroc_binary": skm.roc_auc_score(yb, score) if 0 < yb.sum() < len(yb) else np.nan, "brier_binary": skm.brier_score_loss(yb, score),
           "rsna_weighted_log_loss": skm.log_loss(y, sub[PROBS].to_numpy(), sample_weight=np.array([1.0, 2.0, 4.0])[y], labels=[0, 1, 2])}  # fmt: skip
    for g in range(3):
        out[f"sensitivity_grade{g}"] = skm.recall_score(y == g, p == g, zero_division=np.nan)
        out[f"specificity_grade{g}"] = skm.recall_score(y != g, p != g, zero_division=np.nan)
    return out


def groups(paired: pd.DataFrame, breakdown: str):
    if breakdown == "all":
        return [("all", paired)]
    if " x " in breakdown:  # a crossing such as "level x vendor": groups named "L4-L5 x GE"
        a, b = breakdown.split(" x ")
        return [(f"{ga} x {gb}", sub) for (ga, gb), sub in paired.groupby([a, b])]
    return [(str(g), sub) for g, sub in paired.groupby(breakdown)]


def test_every_metric_is_recomputed_by_sklearn(grading_demo):
    _, doc, _, paired = grading_demo
    reported = pd.DataFrame(doc["metrics"])
    assert set(reported["breakdown"]) == {"all", "level", "condition", "site", "vendor", "sex", "age_band"}
    for breakdown in reported["breakdown"].unique():
        for group, sub in groups(paired, breakdown):
            expected = sklearn_metrics(sub)
            got = reported[(reported["breakdown"] == breakdown) & (reported["group"] == group)].set_index("metric")["value"]
            assert set(got.index) == set(expected), (breakdown, group)
            for name, value in expected.items():
                assert (got[name] if got[name] is not None else np.nan) == pytest.approx(value, abs=TOL, nan_ok=True), (breakdown, group, name)


def test_confusion_counts_rsna_terms_curves_and_agreement(grading_demo):
    _, doc, grades, paired = grading_demo
    conf = pd.DataFrame(doc["confusion"])
    for breakdown in conf["breakdown"].unique():
        for group, sub in groups(paired, breakdown):
            cells = conf[(conf["breakdown"] == breakdown) & (conf["group"] == group)].pivot(index="grade_ref", columns="grade_model", values="count")
            np.testing.assert_array_equal(cells.to_numpy(), skm.confusion_matrix(sub["grade_ref"], sub["grade_model"], labels=[0, 1, 2]))
    for condition, sub in paired.groupby("condition"):
        y = sub["grade_ref"].to_numpy()
        expected = skm.log_loss(y, sub[PROBS].to_numpy(), sample_weight=np.array([1.0, 2.0, 4.0])[y], labels=[0, 1, 2])
        assert doc["rsna"]["per_condition"][condition] == pytest.approx(expected, rel=1e-12)
    spinal = paired[paired["condition"] == "spinal_canal_stenosis"].assign(severe=lambda d: (d["grade_ref"] == 2).astype(int),
                                                                            w=lambda d: np.array([1.0, 2.0, 4.0])[d["grade_ref"]]).groupby("case")  # fmt: skip
    any_severe = skm.log_loss(spinal["severe"].max(), spinal["p_2"].max(), sample_weight=spinal["w"].max(), labels=[0, 1])
    assert doc["rsna"]["any_severe_spinal"] == pytest.approx(any_severe, rel=1e-12)
    yb, score = paired["grade_ref"] >= 1, paired[["p_1", "p_2"]].sum(axis=1)
    prob_true, prob_pred = calibration.calibration_curve(yb, score, n_bins=10, strategy="uniform")
    rel = pd.DataFrame(doc["curves"]["reliability"])
    np.testing.assert_allclose(rel["observed"], prob_true, atol=TOL)
    np.testing.assert_allclose(rel["mean_predicted"], prob_pred, atol=TOL)
    fpr, tpr, _ = skm.roc_curve(yb, score, drop_intermediate=False)
    roc = pd.DataFrame(doc["curves"]["roc"])
    np.testing.assert_allclose(roc["fpr"], fpr, atol=TOL)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=TOL)
    for vendor, sub in paired.groupby("vendor"):
        fpr, tpr, _ = skm.roc_curve(sub["grade_ref"] >= 1, sub[["p_1", "p_2"]].sum(axis=1), drop_intermediate=False)
        roc = pd.DataFrame(doc["curves"]["by_group"]["vendor"][vendor]["roc"])
        np.testing.assert_allclose(roc[["fpr", "tpr"]].to_numpy(), np.column_stack([fpr, tpr]), atol=TOL)
    wide = grades.pivot_table(index=["case", "level", "condition", "side"], columns="reader", values="grade")
    for pair in doc["agreement"]["pairs"]:
        a, b = wide[pair["rater_a"]].astype(int), wide[pair["rater_b"]].astype(int)
        assert pair["kappa_quadratic"] == pytest.approx(skm.cohen_kappa_score(a, b, labels=[0, 1, 2], weights="quadratic"), abs=TOL)
        assert pair["kappa_linear"] == pytest.approx(skm.cohen_kappa_score(a, b, labels=[0, 1, 2], weights="linear"), abs=TOL)
        assert pair["accuracy"] == pytest.approx(skm.accuracy_score(a, b), abs=TOL)
    kinds = {p["kind"] for p in doc["agreement"]["pairs"]}
    assert kinds == {"reader-reader", "model-reader"}


def test_fairness_estimates_match_fairlearn_and_criteria_follow_the_bounds(grading_demo):
    _, doc, _, paired = grading_demo
    for group in ("vendor", "sex"):
        y, p, s = (paired["grade_ref"] >= 1).astype(int), (paired["grade_model"] >= 1).astype(int), paired[group]
        diffs = {d["difference"]: d for d in doc["fairness"][group]["differences"]}
        assert diffs["equalized_odds_difference"]["estimate"] == pytest.approx(flm.equalized_odds_difference(y, p, sensitive_features=s), abs=TOL)
        assert diffs["demographic_parity_difference"]["estimate"] == pytest.approx(flm.demographic_parity_difference(y, p, sensitive_features=s), abs=TOL)
        frame = flm.MetricFrame(metrics={"tpr": flm.true_positive_rate, "fpr": flm.false_positive_rate, "selection_rate": flm.selection_rate},
                                y_true=y, y_pred=p, sensitive_features=s).by_group  # fmt: skip
        for r in doc["fairness"][group]["rates"]:
            if r["rate"] in frame.columns:
                assert r["estimate"] == pytest.approx(frame.loc[r["group"], r["rate"]], abs=TOL)
            assert r["ci_low"] <= r["estimate"] <= r["ci_high"]
    for row in doc["criteria"]["rows"]:
        ok = row["value"] >= row["threshold"] if row["operator"] == ">=" else row["value"] <= row["threshold"]
        assert row["status"] == ("pass" if ok else "fail")


def test_planted_site_and_group_effects_are_found(grading_demo):
    _, doc, _, _ = grading_demo
    severe = {r["group"]: r for r in doc["fairness"]["vendor"]["rates"] if r["rate"] == "severe_sensitivity"}
    planted = SITES[UNDERCALL_SITE]
    assert min(severe, key=lambda v: severe[v]["estimate"]) == planted
    assert all(severe[planted]["ci_high"] < severe[v]["ci_low"] for v in severe if v != planted)  # separated, not just lower
    rows = {r["group"]: r["status"] for r in doc["criteria"]["rows"] if r["id"] == "severe-sensitivity-by-vendor"}
    assert rows == {v: ("fail" if v == planted else "pass") for v in SITES.values()}
    sex = {(r["group"], r["rate"]): r for r in doc["fairness"]["sex"]["rates"]}
    assert sex[("F", "fpr")]["ci_low"] > sex[("M", "fpr")]["ci_high"]  # the planted over-call for F
    eod = next(d for d in doc["fairness"]["sex"]["differences"] if d["difference"] == "equalized_odds_difference")
    assert eod["ci_low"] > 0.05
    assert doc["criteria"]["status"] == {"severe-sensitivity-by-vendor": "fail", "equalized-odds-by-sex": "fail"}
    assert doc["agreement"]["summary"]["model_reader_kappa_quadratic"] < doc["agreement"]["summary"]["reader_reader_kappa_quadratic"] + 0.2


def test_report_shows_the_saved_numbers(grading_demo):
    out, doc, _, _ = grading_demo
    html = (out / REPORT_NAME).read_text()
    for section in ('id="summary"', 'id="criteria"', 'id="fairness"', 'id="readers"', 'id="curves"', 'id="confusion"', 'alt="ROC curve"', 'alt="Reliability curve"'):
        assert section in html
    accuracy = next(m["value"] for m in doc["metrics"] if m["breakdown"] == "all" and m["metric"] == "accuracy")
    assert f"<td>{accuracy:.3f}</td>" in html
    assert "severe-sensitivity-by-vendor: FAIL" in html and "<b>0</b> failed rows" in html
    assert "site-C-" not in json.dumps(doc)  # no case identifiers in the results


def test_unknown_grade_is_a_counted_failure_and_the_run_goes_on(grading_demo, tmp_path):
    out, _, grades, _ = grading_demo
    bad = grades.assign(grade=grades["grade"].astype(object))
    first_ref = bad.index[bad["reader"] == "reader_1"][0]
    first_model = bad.index[(bad["reader"] == "model") & (bad["case"] != bad.loc[first_ref, "case"])][0]
    bad.loc[[first_ref, first_model], "grade"] = "catastrophic"  # each leaves its level's other side unpaired
    result = run_grading(bad, tmp_path / "bad", dataclasses.replace(GradingAudit(), n_resamples=200))
    doc = json.loads(result.results_path.read_text())
    assert doc["failures"]["by_type"] == {"UnknownGrade": 2, "MissingPrediction": 1, "MissingReference": 1}
    assert doc["counts"]["n_levels"] == len(grades[grades["reader"] == "reader_1"]) - 2
    assert "<b>4</b> failed rows" in result.report_path.read_text()


def test_cli_rejects_unknown_task_and_few_cases(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--task", "classification"])
    assert res.exit_code == 2 and "--task: allowed values are ['segmentation', 'grading']; found 'classification'" in res.output
    res = CliRunner().invoke(app, ["demo", "--task", "grading", "--cases", "4", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--cases: must be at least 8" in res.output


def test_grading_run_folder_tables_failures_and_lock(grading_demo, tmp_path):
    out, doc, _, _ = grading_demo
    for name in GRADING_TABLES:
        assert (out / "tables" / f"grading_{name}.csv").is_file(), name
    gaps = pd.read_csv(out / "tables" / "grading_gaps.csv")
    assert len(gaps) == len(doc["gaps"]["rows"]) and pd.read_csv(out / FAILURES).empty and not (out / LOCK).exists()
    # a folder locked by a live process is refused, and nothing is written into it
    table, failures = read_long_table(out / "grades.csv")
    with RunFolder(tmp_path / "run").lock():
        with pytest.raises(LockedError):
            run_grading_table(table, failures, tmp_path / "run", GradingAudit(n_resamples=200))
    assert not (tmp_path / "run").exists()
