"""`spine-audit run` of a `task: grading` protocol: long and RSNA inputs, and protocol errors naming the key."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.errors import ProtocolError
from audit.grading.protocol import load_grading_protocol
from audit.grading.runner import INPUT_NAME, RESULTS_NAME
from grading_builders import rsna_study_tables

LONG_PROTOCOL = """task: grading
name: grading from a long table
input: {format: long, table: grades.csv}
reference: reader_1
bootstrap: {n_resamples: 2000, seed: 0}
criteria:
  - {id: severe-sensitivity-by-vendor, description: d, estimate: severe_sensitivity, group_by: vendor, bound: ci_low, operator: ">=", threshold: 0.8}
  - {id: equalized-odds-by-sex, description: d, estimate: equalized_odds_difference, group_by: sex, bound: ci_high, operator: "<=", threshold: 0.1}
"""


def test_long_table_protocol_reproduces_the_demo(grading_demo, tmp_path):
    out, demo_doc, _, _ = grading_demo
    shutil.copy(out / INPUT_NAME, tmp_path / "grades.csv")
    (tmp_path / "grading.yaml").write_text(LONG_PROTOCOL)
    res = CliRunner().invoke(app, ["run", str(tmp_path / "grading.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "run" / RESULTS_NAME).read_text())
    # same input, seed and criteria as the demo: the same numbers
    assert doc["metrics"] == demo_doc["metrics"] and doc["fairness"] == demo_doc["fairness"]
    assert [(r["id"], r["group"], r["status"]) for r in doc["criteria"]["rows"]] == [(r["id"], r["group"], r["status"]) for r in demo_doc["criteria"]["rows"]]


def test_rsna_protocol_runs(tmp_path):
    train, sub = rsna_study_tables(2, n_studies=20)
    train.to_csv(tmp_path / "train.csv", index=False)
    sub.to_csv(tmp_path / "submission.csv", index=False)
    (tmp_path / "g.yaml").write_text("task: grading\ninput: {format: rsna, table: train.csv, predictions: submission.csv}\nbreakdowns: [level, condition]\nfairness_groups: []\n")
    res = CliRunner().invoke(app, ["run", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "run" / RESULTS_NAME).read_text())
    assert doc["counts"] == {"n_patients": 20, "n_cases": 20, "n_levels": 500} and doc["reference"] == "reference"
    assert set(doc["rsna"]["per_condition"]) == {"spinal_canal_stenosis", "neural_foraminal_narrowing", "subarticular_stenosis"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: grading\ninput: {format: long, table: g.csv}\nthreshold: 1\n", r"protocol: unknown keys \['threshold'\]"),
        ("task: grading\ninput: {format: excel, table: g.csv}\n", r"input.format: allowed values are \['long', 'rsna'\]; found 'excel'"),
        ("task: grading\ninput: {format: rsna, table: t.csv}\n", r"input.predictions: the RSNA format needs"),
        ("task: grading\ninput: {table: g.csv}\nscale: who\n", r"scale: allowed values are \['deepspine', 'rsna'\]; found 'who'"),
        ("task: grading\ninput: {table: g.csv}\ncriteria: [{id: a, description: d, estimate: dice, group_by: vendor}]\n", r"criteria\[0\]: estimate: allowed values"),
        ("task: grading\ninput: {table: g.csv}\nmultiplicity: sidak\n", r"multiplicity: allowed values are \['holm', 'fdr_bh', 'bonferroni', 'none'\]; found 'sidak'"),
        ("task: grading\ninput: {table: g.csv}\nequivalence_margins: {tpr: -1}\n", r"equivalence_margins: expected a mapping of rate to a positive margin"),
        ("task: grading\ninput: {table: g.csv}\nequivalence_margins: {dice: 0.1}\n", r"equivalence_margins: allowed rates are \['selection_rate', 'tpr', 'fpr', 'severe_sensitivity'\]; found \['dice'\]"),
        ("task: grading\ninput: {table: g.csv}\nage_bands: [40, 18]\n", r"age_bands: need at least two strictly increasing edges; found \[40.0, 18.0\]"),
        ("task: grading\ninput: {table: g.csv}\nreference_groups: {site: site-A}\n", r"reference_groups: \['site'\] are not fairness_groups \['vendor', 'sex'\]"),
    ],
    ids=["unknown-key", "format", "rsna-predictions", "scale", "criterion", "multiplicity", "margin-value", "margin-rate", "age-bands", "reference-axis"],
)
def test_protocol_errors_name_the_key(tmp_path, text, message):
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(ProtocolError, match=message):
        load_grading_protocol(tmp_path / "g.yaml")
    res = CliRunner().invoke(app, ["run", str(tmp_path / "g.yaml")])
    assert res.exit_code == 2 and "Error:" in res.output


def test_protocol_reference_group_sets_the_gap_reference(grading_demo, tmp_path):
    out, demo_doc, _, _ = grading_demo
    shutil.copy(out / INPUT_NAME, tmp_path / "grades.csv")
    (tmp_path / "grading.yaml").write_text(LONG_PROTOCOL + "reference_groups: {vendor: Philips}\n")
    proto = load_grading_protocol(tmp_path / "grading.yaml")
    assert dict(proto.audit.reference_groups) == {"vendor": "Philips"}
    res = CliRunner().invoke(app, ["run", str(tmp_path / "grading.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    gaps = json.loads((tmp_path / "run" / RESULTS_NAME).read_text())["gaps"]["rows"]
    assert {g["reference"] for g in gaps if g["axis"] == "vendor"} == {"Philips"} and {g["group"] for g in gaps if g["axis"] == "vendor"} == {"Canon", "GE", "Siemens"}
    assert {g["reference"] for g in gaps if g["axis"] == "sex"} == {g["reference"] for g in demo_doc["gaps"]["rows"] if g["axis"] == "sex"}
