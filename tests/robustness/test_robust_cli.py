"""Fuzz corpus of bad command lines and paths, one kind per case: exit status 2 and one line on stderr naming the
path and what to do, no traceback, and nothing created that was not there before."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.cli import app

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "protocols" / "demo.yaml")


def _file(folder: Path, name: str = "a-file.txt") -> Path:
    path = folder / name
    path.write_text("not a folder\n", encoding="utf-8")
    return path


CASES = {
    "protocol-is-a-folder": (lambda t: ["run", str(t)], "cannot be read"),
    "out-below-a-file": (lambda t: ["run", DEMO, "--out", str(_file(t) / "run")], "Error: cannot write"),
    "out-is-a-file": (lambda t: ["run", DEMO, "--out", str(_file(t))], "Error: cannot write"),
    "out-name-too-long": (lambda t: ["run", DEMO, "--out", str(t / ("x" * 300))], "File name too long"),
    "site-config-is-a-folder": (lambda t: ["sites", "check", str(t)], "is not a file"),
    "site-config-not-utf8": (lambda t: ["sites", "check", str(_bytes(t / "s.yaml", b"name: \xff\xfe"))], "not valid YAML"),
    "report-on-a-file": (lambda t: ["report", str(_file(t))], "is not a folder"),
    "package-into-missing-folder": (lambda t: ["package", str(_finished_looking_run(t)), "--out", str(t / "nowhere" / "p.zip")], "--out: folder"),
    "package-key-missing": (lambda t: ["package", str(_finished_looking_run(t)), "--key", str(t / "absent.key")], "--key: key file"),
    "verify-a-folder": (lambda t: ["verify", str(t)], "is not a file"),
    "compare-missing-run": (lambda t: ["compare", str(_finished_looking_run(t)), str(t / "other")], "other' does not exist"),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _finished_looking_run(folder: Path) -> Path:
    """A folder with every file a finished run has (contents irrelevant: the commands stop before reading them)."""
    run = folder / "run-a"
    run.mkdir(exist_ok=True)
    for name in ("report.html", "results.json", "protocol.yaml", "metrics.csv", "failures.csv", "manifest.csv"):
        (run / name).write_text("", encoding="utf-8")
    return run


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_of_bad_command_line_is_one_line_and_exit_2(tmp_path, kind):
    make_args, expected = CASES[kind]
    args = make_args(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, args)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, (result.exit_code, result.output)
    assert lines[0].startswith("Error: ") and expected in lines[0], lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no debris


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["run", DEMO, "--workers", "0"], "--workers: must be at least 1; found 0"), (["demo", "--cases", "3"], "--cases: must be at least 8 (two per site); found 3")],
    ids=["workers-0", "cases-3"],
)
def test_out_of_range_numbers_are_one_line_and_exit_2(tmp_path, args, expected):
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stderr.splitlines() == [f"Error: {expected}"]
    assert not (tmp_path / "run").exists()
