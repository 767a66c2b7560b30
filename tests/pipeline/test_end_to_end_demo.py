"""End to end: `spine-audit demo` on a tiny synthetic cohort, numbers recomputed independently.

The per-group estimates in results.json are recomputed here with plain pandas from the per-case table,
and the per-case Dice is recomputed with plain numpy from the NIfTI files the run wrote: neither path uses
audit.metrics or audit.stats.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from audit.label_maps import get_label_map
from audit.ontology import remap_labels
from audit.protocol import load_protocol
from audit.provenance import sha256_table
from audit.records import EVALUABLE_STATUSES as EVALUABLE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def results(demo_run) -> dict:
    return json.loads((demo_run[0] / "results.json").read_text())


@pytest.fixture(scope="session")
def analysis(demo_run) -> pd.DataFrame:
    run = demo_run[0]
    metrics = pd.read_csv(run / "metrics.csv")
    manifest = pd.read_csv(run / "manifest.csv")
    return metrics.merge(manifest, on="case_id", how="left")


def test_demo_writes_report_results_and_tables_and_says_where(demo_run):
    run, output = demo_run
    for name in ("report.html", "results.json", "metrics.csv", "manifest.csv", "failures.csv", "tables/group_estimates.csv"):
        assert (run / name).is_file(), name
    assert "report.html" in output and "results.json" in output
    assert (run / "report.html").stat().st_size > 10_000


def test_cohort_has_the_promised_variety(results, demo_size):
    n_cases, _ = demo_size
    table1 = pd.DataFrame(results["cohort"]["table1"])
    groups = lambda axis: set(table1.loc[table1["axis"] == axis, "group"])  # noqa: E731
    assert len(groups("site")) >= 3 and len(groups("vendor") - {"Unknown"}) >= 2
    assert {"1.5T", "3T"} <= groups("field_strength")
    assert results["data"]["n_cases"] == n_cases


def test_every_case_is_in_the_metric_table(analysis, results, demo_size):
    n_cases, _ = demo_size
    assert analysis["case_id"].nunique() == n_cases == results["data"]["n_cases"]
    structures = results["metrics"]["structures"]
    assert len(analysis) == n_cases * len(structures) * len(results["metrics"]["names"])


@pytest.mark.parametrize("axis", ["site", "vendor", "field_strength", "sex"])
def test_group_means_match_an_independent_pandas_recomputation(analysis, results, axis):
    estimates = pd.DataFrame(results["statistics"]["group_estimates"])
    mine = (
        analysis[analysis["status"].isin(EVALUABLE)]
        .groupby([axis, "structure", "metric"])["value"]
        .agg(["mean", "size"])
        .reset_index()
    )
    theirs = estimates[estimates["axis"] == axis]
    assert len(theirs) > 0
    merged = mine.merge(theirs, left_on=[axis, "structure", "metric"], right_on=["group", "structure", "metric"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    np.testing.assert_allclose(merged["mean_x"], merged["mean_y"], rtol=1e-9, atol=1e-12)
    assert (merged["size"] == merged["n_cases"]).all()
    finite = merged[np.isfinite(merged["ci_low"].astype(float))]
    assert (finite["ci_low"] <= finite["mean_y"] + 1e-12).all() and (finite["mean_y"] <= finite["ci_high"] + 1e-12).all()


def test_overall_dice_matches_independent_recomputation(analysis, results):
    overall = pd.DataFrame(results["statistics"]["overall"]).set_index(["structure", "metric"])
    for structure, sub in analysis[(analysis["metric"] == "dice") & analysis["status"].isin(EVALUABLE)].groupby("structure"):
        np.testing.assert_allclose(overall.loc[(structure, "dice"), "mean"], sub["value"].mean(), rtol=1e-9)


def test_case_dice_matches_numpy_on_the_written_files(demo_run, analysis):
    """Dice from the reference and prediction NIfTI files with plain numpy (site and model label maps)."""
    run = demo_run[0]
    dice = analysis[analysis["metric"] == "dice"]
    for case_id, rows in list(dice.groupby("case_id"))[:6]:
        row = rows.iloc[0]
        # paths inside the run folder are stored relative to it (the cohort and the predictions both are)
        assert not Path(row["label_path"]).is_absolute() and not Path(row["prediction_path"]).is_absolute()
        ref = remap_labels(np.asanyarray(nib.load(str(run / row["label_path"])).dataobj), get_label_map(row["label_map"])).array
        pred = np.asanyarray(nib.load(str(run / row["prediction_path"])).dataobj)
        assert pred.shape == ref.shape
        for r in rows.itertuples():
            value = {"vertebral_body": 1, "intervertebral_disc": 2, "spinal_canal": 3, "spinal_cord": 4}[r.structure]
            a, b = ref == value, pred == value
            expected = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
            np.testing.assert_allclose(r.value, expected, rtol=1e-12, err_msg=f"{case_id} {r.structure}")


def test_planted_hard_site_is_found(results):
    """site-D was planted harder: its disc Dice is the worst site's, by a clear margin."""
    est = pd.DataFrame(results["statistics"]["group_estimates"])
    disc = est[(est["axis"] == "site") & (est["structure"] == "intervertebral_disc") & (est["metric"] == "dice")].set_index("group")
    assert disc["mean"].idxmin() == "site-D"
    assert disc.loc["site-D", "mean"] < disc.drop(index="site-D")["mean"].min() - 0.1


def test_provenance_hashes_are_reproducible(demo_run, results, demo_size):
    n_cases, seed = demo_size
    protocol = load_protocol(REPO / "protocols" / "demo.yaml")
    cohort = dataclasses.replace(protocol.synthetic_cohort, n_cases=n_cases, seed=seed)
    assert results["protocol_sha256"] == dataclasses.replace(protocol, synthetic_cohort=cohort).sha256
    manifest = pd.read_csv(demo_run[0] / "manifest.csv")
    deidentified = manifest.drop(columns=["image_path", "label_path", "prediction_path"])
    # the hash covers the de-identified manifest as written (CSV round trip keeps every value)
    assert results["data"]["manifest_sha256"] == sha256_table(deidentified)
    assert len(results["model"]["sha256"]) == 64


def test_acceptance_criteria_are_decided_with_numbers(results):
    acceptance = pd.DataFrame(results["statistics"]["acceptance"])
    assert set(acceptance["id"]) == {"overall-dice", "vendor-dice", "sex-gap"}
    assert set(acceptance["status"]) <= {"pass", "fail", "inconclusive"}
    decided = acceptance[acceptance["status"] != "inconclusive"]
    assert decided["value"].notna().all()
