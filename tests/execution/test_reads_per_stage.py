"""Each image, label and prediction file is opened exactly once per stage (checks, inference, metrics).

All reads go through the guarded reader of :mod:`audit.harmonize.loading` (header budget and voxel checks);
inference and metrics read a file's bytes once and hash and decode those same bytes (prediction cache key,
metric cache key). File opens are counted by wrapping ``builtins.open``/``io.open`` (nibabel, gzip and
pathlib all go through them) while one stage function runs in this process (serial executor, so the
runner's threads are counted too). Both a cold cache (everything computed) and a warm one (every case a
cache hit) are counted.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import io
import shutil
from pathlib import Path

import pytest

from audit.cli import demo_protocol_path
from audit.pipeline import run_audit
from audit.stages import StageContext, stage_checks, stage_inference, stage_metrics
from audit.protocol import load_protocol
from audit.runfolder import RunFolder


@pytest.fixture(scope="module")
def inference_done(tmp_path_factory):
    """An 8-case demo run folder after the inference stage (manifest with prediction paths, model.json)."""
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
    try:
        fn()
    finally:
        monkeypatch.undo()
    return counts


def _clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("stage", "columns", "cache"),
    [
        (stage_checks, ("image_path", "label_path"), None),
        (stage_inference, ("image_path", "label_path"), "cold"),
        (stage_inference, ("image_path", "label_path"), "warm"),
        (stage_metrics, ("label_path", "prediction_path"), "cold"),
        (stage_metrics, ("label_path", "prediction_path"), "warm"),
    ],
    ids=["checks", "inference-cold-cache", "inference-warm-cache", "metrics-cold-cache", "metrics-warm-cache"],
)
def test_each_file_is_opened_once_per_stage(inference_done, monkeypatch, stage, columns, cache):
    protocol, folder = inference_done
    manifest = folder.read_manifest()
    ctx = StageContext(protocol=protocol, folder=folder, device="cpu")
    cache_dir = {stage_inference: folder.predictions_dir, stage_metrics: folder.metric_cache_dir}.get(stage)
    if cache == "cold":
        _clear(cache_dir)
    elif cache == "warm":
        stage(ctx)  # fills the cache; the counted run below is all hits
    counts = count_opens(monkeypatch, lambda: stage(ctx))
    for column in columns:
        assert manifest[column].map(lambda p: isinstance(p, str)).all(), column
        opened = [counts[str(Path(p).resolve())] for p in manifest[column]]
        assert opened == [1] * len(manifest), (column, opened)
    if cache == "cold":
        assert any(cache_dir.rglob("*")), f"{stage.__name__}: the counted run computed nothing into {cache_dir}"
