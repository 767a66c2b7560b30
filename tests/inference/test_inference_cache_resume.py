"""Prediction cache (hit, miss, key contents), resume after a killed process, failures that do not stop a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_testlib import ThresholdNet, blob_case, save_torchscript, trusted_program

from audit.inference import InferenceCase, InferenceResult, load_model, model_spec_from_dict, run_inference
from audit.inference.predict import predict_labels_with_retry
from audit.inference.spec import InferenceSettings
from audit.records import CaseFailure

HERE = Path(__file__).resolve().parent


def threshold_model(tmp_path: Path, **inference):
    path = tmp_path / "thr.pt"
    if not path.exists():  # saved once: a re-traced file differs in bytes, hence in sha256 (a cache miss)
        save_torchscript(ThresholdNet(0.0), path)
    d = {"kind": "torchscript", "path": str(path), "labels": "spine_audit", "preprocessing": {"intensity": "foreground_zscore"},
         "inference": {"device": "cpu", **inference}, **trusted_program(path)}
    return load_model(model_spec_from_dict(d, base_dir=tmp_path))


def test_rerun_hits_cache_and_changed_settings_miss(tmp_path):
    cases = [blob_case(tmp_path / "d", f"c{i}", axcodes=ax, seed=i) for i, ax in enumerate(["PIR", "LPS", "RAS"])]
    first = list(run_inference(threshold_model(tmp_path), cases, cache_dir=tmp_path / "cache"))
    second = list(run_inference(threshold_model(tmp_path), cases, cache_dir=tmp_path / "cache"))
    assert [r.cached for r in first] == [False] * 3 and [r.cached for r in second] == [True] * 3
    assert [r.prediction_path for r in first] == [r.prediction_path for r in second]
    assert set(first[0].timings) >= {"load", "preprocess", "infer", "postprocess", "write"}
    flipped = list(run_inference(threshold_model(tmp_path, tta_flips=[[0]]), cases, cache_dir=tmp_path / "cache"))
    assert [r.cached for r in flipped] == [False] * 3  # preprocessing/inference settings are part of the key
    assert {r.prediction_path for r in flipped}.isdisjoint({r.prediction_path for r in first})
    # a changed image is a miss too (image sha256 in the key)
    img = nib.load(cases[0].image_path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1, img.affine), cases[0].image_path)
    third = list(run_inference(threshold_model(tmp_path), cases[:1], cache_dir=tmp_path / "cache"))
    assert third[0].cached is False and third[0].prediction_path != first[0].prediction_path


def test_batch_size_and_device_do_not_change_the_key(tmp_path):
    case = blob_case(tmp_path / "d", "c0")
    (a,) = run_inference(threshold_model(tmp_path, sw_batch_size=1, roi_size=[8, 8, 8]), [case], cache_dir=tmp_path / "cache")
    (b,) = run_inference(threshold_model(tmp_path, sw_batch_size=4, roi_size=[8, 8, 8]), [case], cache_dir=tmp_path / "cache")
    assert b.cached and a.prediction_path == b.prediction_path


def test_failed_cases_are_recorded_and_the_run_goes_on(tmp_path):
    good = blob_case(tmp_path / "d", "good")
    bad_file = tmp_path / "d" / "garbage.nii.gz"
    bad_file.write_bytes(b"not a nifti")
    four_d = tmp_path / "d" / "label4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.uint8), np.eye(4)), four_d)
    cases = [
        InferenceCase("s/missing", tmp_path / "nope.nii.gz", good.label_path, site="s"),
        InferenceCase("s/garbage", bad_file, good.label_path, site="s"),
        InferenceCase("s/label4d", good.image_path, four_d, site="s"),
        good,
    ]
    seen = []
    out = list(run_inference(threshold_model(tmp_path), cases, cache_dir=tmp_path / "cache", workers=2, progress=lambda d, t: seen.append((d, t))))
    assert [type(o).__name__ for o in out] == ["CaseFailure", "CaseFailure", "CaseFailure", "InferenceResult"]
    assert [o.case_id for o in out] == [c.case_id for c in cases]  # input order kept
    assert out[0].error_type == "FileNotFoundError" and out[1].error_type == "CorruptImageError"
    assert out[2].error_type == "ImageDataError" and "expected a 3-D volume" in out[2].error and "(4, 4, 4, 2)" in out[2].error
    assert all(o.stage == "inference" and o.site == "s" for o in out[:3])
    assert seen == [(i, 4) for i in range(1, 5)]


class OOMOnce(torch.nn.Module):
    """Raises CUDA out-of-memory for the first ``n`` calls, or whenever a batch is larger than ``max_batch``."""

    def __init__(self, n: int = 0, max_batch: int = 10**6) -> None:
        super().__init__()
        self.inner = ThresholdNet(0.0)
        self.n, self.max_batch, self.calls = n, max_batch, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.device.type, x.shape[0]))
        if len(self.calls) <= self.n or x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner.to(x.device)(x)


def test_oom_halves_window_batch_until_it_fits():
    image = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    net = OOMOnce(max_batch=2)
    settings = InferenceSettings(roi_size=(4, 4, 4), overlap=0.0, sw_batch_size=8, amp=False, mode="constant")
    labels, info = predict_labels_with_retry(net, image, settings, device=torch.device("cpu"))
    assert info.sw_batch_size == 2 and info.oom_retries == 2  # 8 -> 4 -> 2
    np.testing.assert_array_equal(labels, (image > 0).astype(np.uint8))


def test_oom_on_accelerator_falls_back_to_cpu():
    # the "meta" device stands in for a GPU: tensors move there, the network fails with OOM, the CPU copy runs
    image = np.random.default_rng(1).normal(size=(6, 6, 6)).astype(np.float32)
    net = OOMOnce(n=1)
    labels, info = predict_labels_with_retry(net, image, InferenceSettings(amp=False), device=torch.device("meta"), cpu_networks={})
    assert info.device == "cpu" and info.oom_retries == 1
    assert net.calls[0][0] == "meta"
    np.testing.assert_array_equal(labels, (image > 0).astype(np.uint8))


def test_oom_on_cpu_with_batch_one_becomes_a_case_failure(tmp_path):
    model = threshold_model(tmp_path)
    object.__setattr__(model, "network", OOMOnce(n=10**6))
    (out,) = list(run_inference(model, [blob_case(tmp_path / "d", "c")], cache_dir=tmp_path / "cache"))
    assert isinstance(out, CaseFailure) and out.error_type == "OutOfMemoryError"


_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {here!r})
    from inference_testlib import ThresholdNet, blob_case
    from audit.inference import load_model, model_spec_from_dict, run_inference, InferenceCase
    from pathlib import Path
    import json
    cases = [InferenceCase(**{{**c, "image_path": Path(c["image_path"]), "label_path": Path(c["label_path"])}}) for c in json.loads({cases!r})]
    model = load_model(model_spec_from_dict({spec!r}, base_dir=Path({tmp!r})))
    for r in run_inference(model, cases, cache_dir=Path({cache!r})):
        print("done", r.case_id, flush=True)
        time.sleep(0.4)
    """
)


def test_resume_after_killed_process_gives_identical_outputs(tmp_path):
    import json

    cases = [blob_case(tmp_path / "d", f"c{i}", axcodes=["PIR", "LPS"][i % 2], seed=i) for i in range(10)]
    path = save_torchscript(ThresholdNet(0.0), tmp_path / "thr.pt")
    spec = {"kind": "torchscript", "path": str(path), "labels": "spine_audit", "inference": {"device": "cpu"}, **trusted_program(path)}
    payload = json.dumps([{"case_id": c.case_id, "image_path": str(c.image_path), "label_path": str(c.label_path), "site": c.site} for c in cases])
    cache = tmp_path / "killed"
    code = _CHILD.format(here=str(HERE), cases=payload, spec=spec, tmp=str(tmp_path), cache=str(cache))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    done = 0
    deadline = time.monotonic() + 60
    while done < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        done += line.startswith("done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert 2 <= done < 10, "the child must be killed mid-run"
    model = load_model(model_spec_from_dict(spec, base_dir=tmp_path))
    resumed = list(run_inference(model, cases, cache_dir=cache))
    assert sum(r.cached for r in resumed) >= 2 and not all(r.cached for r in resumed)
    fresh = list(run_inference(model, cases, cache_dir=tmp_path / "fresh"))
    for r, f in zip(resumed, fresh):
        assert isinstance(r, InferenceResult)
        assert r.prediction_path.read_bytes() == f.prediction_path.read_bytes()
    assert not list(cache.glob("*/.*tmp*"))


def test_progress_and_workers_validation(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        list(run_inference(threshold_model(tmp_path), [], cache_dir=tmp_path / "c", workers=0))
