"""Fixtures of the grading tests (one grading demo run per session, shared by every module)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from grading_builders import PROBS
from typer.testing import CliRunner

from audit.cli import app
from audit.grading.runner import INPUT_NAME, RESULTS_NAME


@pytest.fixture(scope="session")
def grading_demo(tmp_path_factory):
    """One `spine-audit demo --task grading` run: (run folder, results, input table, reference-model pairs)."""
    out = tmp_path_factory.mktemp("grading") / "run"
    result = CliRunner().invoke(app, ["demo", "--task", "grading", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / RESULTS_NAME).read_text())
    grades = pd.read_csv(out / INPUT_NAME, dtype={"case": str, "patient": str})
    key = ["case", "level", "condition", "side"]
    ref = grades[grades["reader"] == "reader_1"].drop(columns=PROBS)
    model = grades[grades["reader"] == "model"][[*key, "grade", *PROBS]]
    paired = ref.merge(model, on=key, suffixes=("_ref", "_model"))
    # the age band rule (audit.records.age_bands), written out: [18, 40, 60, 75, 120) left-closed, the last open in its label
    paired["age_band"] = pd.cut(paired["age_years"], [18, 40, 60, 75, 120], right=False, labels=["18-39", "40-59", "60-74", "75+"]).astype(str)
    return out, doc, grades, paired
