"""Run folders as users meet them: relative --out from another directory, moved folders, --from/--until
reruns, cached metrics, locked and half-made folders. One small demo run (8 cases) is shared (~10 s)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app, demo_protocol_path
from audit.fileio import FolderLock, LockedError
from audit.pipeline import run_audit
from audit.protocol import load_protocol
from audit.report import render_report
from audit.runfolder import LOCK, METRICS, REPORT, RESULTS, STAGES, RunFolder, RunFolderError


def small_demo_protocol(n_cases: int = 8, seed: int = 5):
    """The demo protocol on a small cohort, with a fast bootstrap and no mixed model."""
    proto = load_protocol(demo_protocol_path())
    stats = dataclasses.replace(
        proto.statistics, bootstrap_iterations=200, adjusted_model=dataclasses.replace(proto.statistics.adjusted_model, enabled=False)
    )
    return dataclasses.replace(proto, synthetic_cohort=dataclasses.replace(proto.synthetic_cohort, n_cases=n_cases, seed=seed), statistics=stats)


def gallery_images(report: Path) -> int:
    return len(re.findall(r'<img alt="case ', report.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """A full run written to the relative folder ``runs/demo`` from a working directory of its own."""
    cwd = tmp_path_factory.mktemp("cwd")
    old = Path.cwd()
    os.chdir(cwd)
    try:
        summary = run_audit(small_demo_protocol(), run_dir=Path("runs") / "demo", device="cpu")
    finally:
        os.chdir(old)
    return cwd / "runs" / "demo", summary


def test_a_relative_out_draws_the_gallery(relative_run):
    run, summary = relative_run
    assert summary.run_dir == run and summary.report_path == run / REPORT
    assert gallery_images(run / REPORT) > 0
    manifest = pd.read_csv(run / "manifest.csv", dtype=str)
    assert manifest["prediction_path"].str.startswith("predictions/").all()  # relative to the folder, joined once
    assert manifest["image_path"].str.startswith("cohort/").all()
    assert not (run / LOCK).exists()


def test_a_moved_run_folder_still_renders_with_its_gallery(relative_run, tmp_path, monkeypatch):
    moved = tmp_path / "archive" / "demo-moved"
    shutil.copytree(relative_run[0], moved)
    monkeypatch.chdir(tmp_path / "archive")  # an odd working directory, and a relative argument
    (moved / REPORT).unlink()
    report = render_report("demo-moved")
    assert report == moved / REPORT and gallery_images(report) == gallery_images(relative_run[0] / REPORT)


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def test_from_stats_reuses_the_metric_table_and_gives_the_same_statistics(relative_run, tmp_path):
    run = copy_of(relative_run[0], tmp_path)
    before = json.loads((run / RESULTS).read_text())
    run_audit(small_demo_protocol(), run_dir=run, from_stage="stats", until="stats")
    after = json.loads((run / RESULTS).read_text())
    assert after["statistics"] == before["statistics"] and after["data"] == before["data"]
    assert not (run / REPORT).exists()  # the report of the earlier run is gone, not left stale beside new results


def test_from_metrics_takes_every_case_from_the_metric_cache(relative_run, tmp_path, monkeypatch):
    run = copy_of(relative_run[0], tmp_path)
    before = (run / METRICS).read_bytes()

    def no_computation(*args, **kwargs):
        raise AssertionError("a cached case was recomputed")

    monkeypatch.setattr("audit.metric_cache.evaluate_case", no_computation)
    run_audit(small_demo_protocol(), run_dir=run, from_stage="metrics", until="metrics")
    assert (run / METRICS).read_bytes() == before
    assert not (run / RESULTS).exists()


def test_the_metric_cache_misses_when_the_settings_change(relative_run, tmp_path):
    run = copy_of(relative_run[0], tmp_path)
    proto = small_demo_protocol()
    proto = dataclasses.replace(proto, metrics=dataclasses.replace(proto.metrics, names=("dice",), nsd_tolerances_mm=()))
    run_audit(proto, run_dir=run, until="metrics")  # another protocol, from the first stage
    assert set(pd.read_csv(run / METRICS)["metric"]) == {"dice"}
    assert not (run / RESULTS).exists() and not (run / REPORT).exists()  # the other protocol's outputs are gone


def test_a_rerun_until_an_earlier_stage_removes_later_outputs(relative_run, tmp_path):
    run = copy_of(relative_run[0], tmp_path)
    run_audit(small_demo_protocol(), run_dir=run, until="sites")
    for name in (METRICS, RESULTS, REPORT, "tables", "model.json"):
        assert not (run / name).exists(), name
    assert RunFolder(run).completed() == ("sites",)
    assert (run / "predictions").is_dir()  # caches stay


def test_from_a_stage_the_folder_lacks_exits_2_with_one_line(relative_run, tmp_path):
    run = copy_of(relative_run[0], tmp_path)
    run_audit(small_demo_protocol(), run_dir=run, until="sites")
    protocol = run / "protocol.yaml"
    result = CliRunner().invoke(app, ["run", str(protocol), "--out", str(run), "--from", "stats", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "--from stats needs the outputs of stage 'checks'" in " ".join(result.output.split())  # rich wraps lines


def test_from_a_later_stage_with_another_protocol_is_refused(relative_run, tmp_path):
    run = copy_of(relative_run[0], tmp_path)
    with pytest.raises(RunFolderError, match="another protocol"):
        run_audit(small_demo_protocol(seed=6), run_dir=run, from_stage="stats")
    assert (run / RESULTS).is_file()  # refused before anything was removed


def test_a_locked_folder_refuses_a_second_run(relative_run, tmp_path):
    run = copy_of(relative_run[0], tmp_path)
    before = (run / RESULTS).read_bytes()
    with FolderLock(run / LOCK):
        with pytest.raises(LockedError, match="in use by process"):
            run_audit(small_demo_protocol(), run_dir=run, from_stage="stats")
        result = CliRunner().invoke(app, ["run", str(run / "protocol.yaml"), "--out", str(run), "--from", "stats", "--quiet"])
        assert result.exit_code == 2 and "in use by process" in " ".join(result.output.split()), result.output  # rich wraps lines
    assert (run / RESULTS).read_bytes() == before


def test_a_run_that_fails_before_any_stage_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proto = dataclasses.replace(small_demo_protocol(), synthetic_cohort=None)  # no sites and no cohort
    with pytest.raises(ValueError, match="lists no sites"):
        run_audit(proto, run_dir="runs/nothing")
    assert not (tmp_path / "runs" / "nothing").exists()


def test_every_stage_is_recorded_complete(relative_run):
    assert RunFolder(relative_run[0]).completed() == STAGES
