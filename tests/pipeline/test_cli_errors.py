"""The CLI's one error boundary: every user error prints one line on stderr and exits 2, no traceback unless
``--debug``, no empty run folder left behind; ``--fail-on-criteria`` exits 3; every parameter has help text."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.pipeline import RunSummary
from audit.runfolder import STAGES

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "protocols" / "demo.yaml"


def assert_user_error(result, *, contains: str = "") -> str:
    """Exit status 2, exactly one line on stderr, no traceback anywhere; returns the line."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    assert contains in lines[0], lines[0]
    return lines[0]


def protocol_file(folder: Path, **changes) -> Path:
    """The demo protocol as a file in ``folder`` with top-level sections replaced by ``changes``."""
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data.update(changes)
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def inline_site(root: str) -> list[dict]:
    return [{"name": "hospital", "format": "nifti_table", "root": root}]


@pytest.mark.parametrize(
    ("make_args", "contains"),
    [
        (lambda t: ["run", str(t / "missing.yaml")], "missing.yaml' cannot be read"),
        (lambda t: ["run", str(_write(t / "p.yaml", "name: [unclosed\n"))], "is not valid YAML"),
        (lambda t: ["run", str(_write(t / "p.yaml", DEMO.read_text().replace("  alpha: 0.05\n", "  alpha: 0.05\n  alpha: 0.5\n")))], "duplicate key 'alpha'"),
        (lambda t: ["run", str(protocol_file(t, metrics={"names": ["dice", "hd99"]}))], "metrics.names[1]: metric: unknown name 'hd99'"),
        (lambda t: ["run", str(protocol_file(t, synthetic_cohort=None, sites=inline_site(str(t)), model={"kind": "torchscript", "path": "net.ts", "labels": "spine_audit"}))], "model.path: kind 'torchscript' needs an existing file"),
        (lambda t: ["run", str(protocol_file(t, synthetic_cohort=None, sites=inline_site("${SPINE_AUDIT_CLI_TEST_UNSET}/x")))], "sites[0].root: environment variable SPINE_AUDIT_CLI_TEST_UNSET is not set"),
        (lambda t: ["run", str(protocol_file(t, synthetic_cohort=None, sites=inline_site(str(t / "no-such-site"))))], "no-such-site' does not exist"),
        (lambda t: ["run", str(DEMO), "--until", "everything"], f"--until: allowed values are {list(STAGES)}; found 'everything'"),
        (lambda t: ["run", str(DEMO), "--until", "sites", "--fail-on-criteria"], "--fail-on-criteria: the criteria are judged in the stats stage"),
    ],
    ids=["missing-file", "bad-yaml", "duplicate-key", "unknown-metric", "missing-model", "unset-env-root", "missing-root", "bad-until", "criteria-until-sites"],
)
def test_run_user_errors_print_one_line_exit_2_and_create_no_folder(tmp_path, monkeypatch, make_args, contains):
    monkeypatch.delenv("SPINE_AUDIT_CLI_TEST_UNSET", raising=False)
    out = tmp_path / "runs" / "audit"
    result = CliRunner().invoke(app, [*make_args(tmp_path), "--out", str(out), "--quiet"])
    assert_user_error(result, contains=contains)
    assert not (tmp_path / "runs").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("make_args", "contains"),
    [
        (lambda t: ["sites", "check", str(t / "absent.yaml")], "absent.yaml not found"),
        (lambda t: ["sites", "check", str(_write(t / "s.yaml", "name: a\nformat: bids\nformat: nifti_table\nroot: .\n"))], "duplicate key 'format'"),
        (lambda t: ["sites", "check", str(_write(t / "s.yaml", "name: a\nformat: png_folder\nroot: .\n"))], "sites[a].format:"),
        (lambda t: ["report", str(t / "no-run")], "no-run' does not exist"),
        (lambda t: ["report", str(_unfinished_run(t))], "lacks ['results.json', 'metrics.csv']: the run did not finish"),
        (lambda t: ["package", str(_unfinished_run(t))], "lacks ['report.html', 'results.json', 'protocol.yaml', 'metrics.csv', 'failures.csv']"),
        (lambda t: ["verify", str(t / "none.zip")], "none.zip' does not exist"),
        (lambda t: ["compare", str(_unfinished_run(t))], "compare needs at least two run folders; found 1"),
    ],
    ids=["site-config-missing", "site-config-duplicate", "site-config-format", "report-missing", "report-unfinished", "package-unfinished", "verify-missing", "compare-one"],
)
def test_other_commands_user_errors_print_one_line_exit_2(tmp_path, make_args, contains):
    assert_user_error(CliRunner().invoke(app, make_args(tmp_path)), contains=contains)


def _unfinished_run(folder: Path) -> Path:
    run = folder / "unfinished"
    run.mkdir(exist_ok=True)
    (run / "manifest.csv").write_text("case_id,site\n", encoding="utf-8")
    return run


def test_an_output_folder_below_a_file_is_a_user_error(tmp_path):
    blocker = _write(tmp_path / "a-file", "")
    result = CliRunner().invoke(app, ["run", str(DEMO), "--out", str(blocker / "run"), "--quiet"])
    line = assert_user_error(result, contains="Error: cannot write")
    assert "a-file" in line and not blocker.is_dir()


def _failing_pipeline(exc: BaseException, *, write_first: bool = False):
    """A stand-in for run_audit that creates the run folder (and optionally one file) and then raises ``exc``."""

    def run_audit(protocol, *, run_dir, **kwargs):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if write_first:
            (Path(run_dir) / "protocol.yaml").write_text("name: x\n", encoding="utf-8")
        raise exc

    return run_audit


@pytest.mark.parametrize(
    ("code", "text"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied"), (errno.EDQUOT, "Disk quota exceeded")],
    ids=["full-disk", "read-only", "no-permission", "quota"],
)
def test_an_unwritable_or_full_output_folder_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch, code, text):
    out = tmp_path / "reports" / "run-1"
    monkeypatch.setattr("audit.pipeline.run_audit", _failing_pipeline(OSError(code, text, str(out / "manifest.csv"))))
    line = assert_user_error(CliRunner().invoke(app, ["run", str(DEMO), "--out", str(out), "--quiet"]), contains=text)
    assert f"cannot write {out / 'manifest.csv'}" in line
    assert not (tmp_path / "reports").exists()  # both folders this invocation created are gone


def test_a_run_folder_with_content_or_that_existed_before_is_kept(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("audit.pipeline.run_audit", _failing_pipeline(full, write_first=True))
    out = tmp_path / "run-with-file"
    assert_user_error(CliRunner().invoke(app, ["run", str(DEMO), "--out", str(out), "--quiet"]))
    assert (out / "protocol.yaml").is_file()
    existing = tmp_path / "existing"
    existing.mkdir()
    monkeypatch.setattr("audit.pipeline.run_audit", _failing_pipeline(full))
    assert_user_error(CliRunner().invoke(app, ["run", str(DEMO), "--out", str(existing), "--quiet"]))
    assert existing.is_dir()


def test_debug_adds_the_traceback_and_keeps_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "missing.yaml"), "--debug"])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "ProtocolError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: protocol file")


def test_an_unexpected_exception_is_reported_as_an_internal_error_with_exit_1(tmp_path, monkeypatch):
    monkeypatch.setattr("audit.pipeline.run_audit", _failing_pipeline(RuntimeError("boom")))
    result = CliRunner().invoke(app, ["run", str(DEMO), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == ["Internal error: RuntimeError: boom (a bug in spine-audit; rerun with --debug and report the traceback)"]


def _summary(run_dir: Path, *statuses: str) -> RunSummary:
    return RunSummary(run_dir, None, run_dir / "results.json", 8, 0, 1.0, tuple((f"c{i}", s) for i, s in enumerate(statuses)))


@pytest.mark.parametrize(
    ("statuses", "flag", "code"),
    [(("pass", "pass"), True, 0), (("pass", "fail"), True, 3), (("pass", "inconclusive"), True, 3), (("fail",), False, 0), ((), True, 0)],
    ids=["all-pass", "one-fail", "inconclusive", "fail-without-flag", "no-criteria"],
)
def test_fail_on_criteria_exits_3_when_a_criterion_is_not_passed(tmp_path, monkeypatch, statuses, flag, code):
    monkeypatch.setattr("audit.pipeline.run_audit", lambda protocol, *, run_dir, **kw: _summary(Path(run_dir), *statuses))
    args = ["run", str(DEMO), "--out", str(tmp_path / "r"), "--quiet"] + (["--fail-on-criteria"] if flag else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    if code == 3:
        assert result.stderr.splitlines() == [f"Acceptance criteria not met: {', '.join(f'c{i} {s}' for i, s in enumerate(statuses) if s != 'pass')} (exit status 3, --fail-on-criteria)"]
    demo = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quiet"] + (["--fail-on-criteria"] if flag else []))
    assert demo.exit_code == code, demo.output


def _all_parameters(command, path: str = "spine-audit"):
    if hasattr(command, "commands"):  # a group (typer vendors its own click)
        for name, sub in command.commands.items():
            yield from _all_parameters(sub, f"{path} {name}")
    else:
        for param in command.params:
            yield path, param


def test_every_parameter_of_every_command_has_help_text():
    params = list(_all_parameters(typer.main.get_command(app)))
    assert len(params) > 30
    missing = [f"{path} {param.name}" for path, param in params if not (getattr(param, "help", None) or "").strip()]
    assert missing == []
    commands = typer.main.get_command(app)
    assert all((sub.help or "").strip() for sub in commands.commands.values())


# ---- a real process: what a user sees in a terminal ---------------------------------------------


def spine_audit(args: list[str], cwd: Path, module: str = "audit.cli") -> subprocess.CompletedProcess:
    """Run ``python -m <module> ARGS`` from ``cwd`` with this worktree's package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_real_process_prints_one_line_and_exits_2_and_debug_shows_the_traceback(tmp_path):
    bad = _write(tmp_path / "p.yaml", DEMO.read_text().replace("primary_metric: dice", "primary_metric: dice_score"))
    plain = spine_audit(["run", "p.yaml", "--out", "out"], cwd=tmp_path)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.splitlines() == [
        "Error: statistics.primary_metric: must be one of the protocol's metrics ['assd', 'dice', 'hd95', 'nsd_2mm']; found 'dice_score'"
    ]
    assert not (tmp_path / "out").exists()
    debug = spine_audit(["run", str(bad), "--debug"], cwd=tmp_path, module="audit")
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and debug.stderr.splitlines()[-1] == plain.stderr.strip()
