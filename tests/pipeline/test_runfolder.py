"""The run folder on its own: atomic tables, the lock file, stage bookkeeping, relative paths."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from audit.fileio import FolderLock, LockedError, atomic_write
from audit.records import CaseFailure
from audit.runfolder import FAILURES, LOCK, METRICS, RESULTS, STAGES, RunFolder, RunFolderError


def tiny_metric_table(n_cases: int, value: float) -> pd.DataFrame:
    """A valid metric table: one Dice row per case, all with ``value``."""
    return pd.DataFrame(
        {"case_id": [f"s/{i}" for i in range(n_cases)], "structure": "spinal_cord", "metric": "dice", "value": value, "status": "ok",
         "reference_volume_ml": 1.0, "predicted_volume_ml": 1.0, "error": None}
    )  # fmt: skip


def dead_pid() -> int:
    """The id of a process that has exited (a child we started and waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_full_disk_never_leaves_a_truncated_table(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    folder.write_metrics(tiny_metric_table(50, 0.9))
    before = folder.path(METRICS).read_bytes()

    def half_then_enospc(self, handle, **kwargs):  # writes part of the table, then the disk is full
        handle.write("case_id,structure\ns/0,spinal")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_enospc)
    with pytest.raises(OSError, match="metrics.csv") as info:
        folder.write_metrics(tiny_metric_table(50, 0.1))
    assert info.value.errno == errno.ENOSPC
    assert folder.path(METRICS).read_bytes() == before  # the previous table, intact
    assert sorted(p.name for p in folder.root.iterdir()) == [METRICS]  # no temporary file left


def test_atomic_write_removes_its_temporary_file_on_any_error(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def boom(fh):
        fh.write("new, partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_a_second_run_on_a_locked_folder_is_refused_with_the_owner(tmp_path):
    lock = tmp_path / LOCK
    with FolderLock(lock):
        with pytest.raises(LockedError, match=rf"process {os.getpid()} on host {socket.gethostname()}.*delete {lock}"):
            FolderLock(lock).acquire()
    assert not lock.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    lock = tmp_path / LOCK
    stale = dead_pid()
    lock.write_text(json.dumps({"pid": stale, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}))
    with FolderLock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"process {stale}" in caplog.text and "no longer running" in caplog.text
    assert not lock.exists() and not (tmp_path / (LOCK + ".break")).exists()


@pytest.mark.parametrize("content", ['{"pid": 1, "host": "another-host"}', "garbage"], ids=["other-host", "unreadable"])
def test_a_lock_that_cannot_be_checked_is_never_broken(tmp_path, content):
    lock = tmp_path / LOCK
    lock.write_text(content)
    with pytest.raises(LockedError):
        FolderLock(lock).acquire()
    assert lock.read_text() == content


def test_stored_paths_are_relative_inside_the_folder_and_absolute_outside(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = RunFolder("runs/a")  # relative, as users type it
    assert folder.root == tmp_path / "runs" / "a"
    assert folder.stored_path("runs/a/predictions/x.nii.gz") == "predictions/x.nii.gz"
    assert folder.stored_path("data/img.nii.gz") == str(tmp_path / "data" / "img.nii.gz")
    assert folder.resolve("predictions/x.nii.gz") == str(folder.root / "predictions" / "x.nii.gz")
    assert folder.stored_path(None) is None and folder.resolve(float("nan")) is None


def test_failures_are_recorded_per_stage_and_listed_together(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_failures("sites", [CaseFailure("s/a", "adapter", "no label", site="s")])
    folder.write_failures("metrics", [CaseFailure("s/b", "metrics", "bad affine", site="s")])
    assert [f.case_id for f in folder.read_failures()] == ["s/a", "s/b"]
    assert [f.case_id for f in folder.read_failures(before="inference")] == ["s/a"]
    assert pd.read_csv(folder.path(FAILURES))["case_id"].tolist() == ["s/a", "s/b"]
    folder.clear_from("checks")  # a rerun from checks drops the later stages' records only
    assert [f.case_id for f in folder.read_failures()] == ["s/a"]


def test_begin_refuses_a_later_start_without_earlier_outputs_or_with_another_protocol(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(RunFolderError, match="needs the outputs of stage 'sites'.*--until sites"):
        folder.begin(protocol_sha256="a" * 64, start="metrics", until="report")
    folder.begin(protocol_sha256="a" * 64, start="sites", until="report")
    for stage in STAGES[:3]:
        folder.complete(stage)
    folder.begin(protocol_sha256="a" * 64, start="metrics", until="report")  # fine: sites..inference done
    with pytest.raises(RunFolderError, match="another protocol"):
        folder.begin(protocol_sha256="b" * 64, start="metrics", until="report")
    with pytest.raises(ValueError, match="comes after"):
        folder.begin(protocol_sha256="a" * 64, start="stats", until="metrics")


def test_results_are_validated_before_they_are_written(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(ValueError, match="missing protocol_sha256"):
        folder.write_results({"schema_version": "1.0"})
    assert not folder.has(RESULTS)


def test_manifest_round_trip_keeps_text_as_text(tmp_path):
    folder = RunFolder(tmp_path)
    manifest = pd.DataFrame(
        {"case_id": ["s/001"], "site": ["s"], "patient_id": ["007"], "image_path": [str(tmp_path / "cohort" / "i.nii.gz")],
         "label_path": ["/elsewhere/l.nii.gz"], "prediction_path": [None], "vendor": ["GE"], "field_strength_t": [3.0],
         "field_strength": ["3T"], "scanner_model": ["NA"], "age_years": [np.nan], "sex": ["F"], "race": ["Unknown"], "ethnicity": ["Unknown"]}
    )  # fmt: skip
    folder.write_manifest(manifest)
    stored = pd.read_csv(folder.path("manifest.csv"), dtype=str)
    assert stored.loc[0, "image_path"] == "cohort/i.nii.gz" and stored.loc[0, "label_path"] == "/elsewhere/l.nii.gz"
    back = folder.read_manifest()
    assert back.loc[0, "patient_id"] == "007" and back.loc[0, "scanner_model"] == "NA"
    assert back.loc[0, "image_path"] == str(tmp_path / "cohort" / "i.nii.gz") and back.loc[0, "prediction_path"] is None


def test_an_unreadable_stage_record_counts_as_nothing_done(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "run.json").write_text('{"completed": ["sites", "checks"')  # truncated by a crash of an older version
    assert folder.completed() == ()
    with pytest.raises(RunFolderError, match="needs the outputs of stage 'sites'"):
        folder.begin(protocol_sha256="a" * 64, start="inference", until="report")
