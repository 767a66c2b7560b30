"""Each image and label file is opened once in the checks stage (on the executor).

(Inference and metrics read each file once on h-scale before the guarded reader of h-trust-model was merged; with
it, inference opens the image twice and metrics open label and prediction more than once: to be redone on top
of ``audit.harmonize.loading``.)

File opens are counted by wrapping ``builtins.open``/``io.open`` (nibabel, gzip and pathlib all go through
them) while one stage function runs in this process.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import io
from pathlib import Path

import pytest

from audit.cli import demo_protocol_path
from audit.pipeline import run_audit
from audit.stages import StageContext, stage_checks
from audit.protocol import load_protocol
from audit.runfolder import RunFolder


@pytest.fixture(scope="module")
def sites_done(tmp_path_factory):
    protocol = load_protocol(demo_protocol_path())
    protocol = dataclasses.replace(protocol, synthetic_cohort=dataclasses.replace(protocol.synthetic_cohort, n_cases=8, seed=5))
    run = tmp_path_factory.mktemp("reads") / "run"
    run_audit(protocol, run_dir=run, device="cpu", until="inference")
    return protocol, RunFolder(run)


def count_opens(monkeypatch, fn):
    counts: collections.Counter[str] = collections.Counter()
    real = builtins.open

    def counting(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            counts[str(Path(file).resolve())] += 1
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    monkeypatch.setattr(io, "open", counting)
    fn()
    monkeypatch.undo()
    return counts


@pytest.mark.parametrize(
    ("stage", "columns"),
    [(stage_checks, ("image_path", "label_path"))],
    ids=["checks"],
)
def test_each_file_is_opened_once_per_stage(sites_done, monkeypatch, stage, columns):
    protocol, folder = sites_done
    manifest = folder.read_manifest()
    ctx = StageContext(protocol=protocol, folder=folder, device="cpu")
    counts = count_opens(monkeypatch, lambda: stage(ctx))
    for column in columns:
        opened = [counts[str(Path(p).resolve())] for p in manifest[column]]
        assert opened == [1] * len(manifest), (column, opened)
