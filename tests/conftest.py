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
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """One `spine-audit demo` run on a tiny cohort, shared by the end-to-end and report tests (~15 s)."""
    from audit.cli import app

    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--cases", str(DEMO_CASES), "--seed", str(DEMO_SEED), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output
