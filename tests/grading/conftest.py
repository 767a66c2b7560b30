"""The session fixture of the grading tests: one `spine-audit demo --task grading` run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.grading.runner import INPUT_NAME, RESULTS_NAME

PROBS = ["p_0", "p_1", "p_2"]


@pytest.fixture(scope="session")
def grading_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("grading") / "run"
    result = CliRunner().invoke(app, ["demo", "--task", "grading", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / RESULTS_NAME).read_text())
    grades = pd.read_csv(out / INPUT_NAME, dtype={"case": str, "patient": str})
    key = ["case", "level", "condition", "side"]
    ref = grades[grades["reader"] == "reader_1"].drop(columns=PROBS)
    model = grades[grades["reader"] == "model"][[*key, "grade", *PROBS]]
    paired = ref.merge(model, on=key, suffixes=("_ref", "_model"))
    return out, doc, grades, paired
