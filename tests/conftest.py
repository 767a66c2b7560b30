"""Shared pytest fixtures: paths to the repository and to the real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data folder ../shared/data; tests using it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (expected ../shared/data beside the repository)")
    return SHARED_DATA


DEMO_CASES, DEMO_SEED = 16, 3


@pytest.fixture(scope="session")
def demo_size() -> tuple[int, int]:
    """(cases, seed) of the shared :func:`demo_run` (a fixture, so tests never import this conftest by name)."""
    return DEMO_CASES, DEMO_SEED


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """One `spine-audit demo` run on a tiny cohort, shared by the end-to-end and report tests (~15 s)."""
    from audit.cli import app

    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--cases", str(DEMO_CASES), "--seed", str(DEMO_SEED), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


@pytest.fixture(scope="session")
def grading_demo(tmp_path_factory):
    """One `spine-audit demo --task grading` run: (run folder, results, input table, reference-model pairs)."""
    import json

    import pandas as pd

    from audit.cli import app
    from audit.grading.runner import INPUT_NAME, RESULTS_NAME

    out = tmp_path_factory.mktemp("grading") / "run"
    result = CliRunner().invoke(app, ["demo", "--task", "grading", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / RESULTS_NAME).read_text())
    grades = pd.read_csv(out / INPUT_NAME, dtype={"case": str, "patient": str})
    key = ["case", "level", "condition", "side"]
    probs = [c for c in grades.columns if c.startswith("p_")]
    ref = grades[grades["reader"] == "reader_1"].drop(columns=probs)
    model = grades[grades["reader"] == "model"][[*key, "grade", *probs]]
    paired = ref.merge(model, on=key, suffixes=("_ref", "_model"))
    # the age band rule (audit.records.age_bands), written out: [18, 40, 60, 75, 120) left-closed, the last open in its label
    paired["age_band"] = pd.cut(paired["age_years"], [18, 40, 60, 75, 120], right=False, labels=["18-39", "40-59", "60-74", "75+"]).astype(str)
    return out, doc, grades, paired
