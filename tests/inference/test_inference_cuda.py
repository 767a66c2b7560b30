"""The CUDA path for real: mixed precision, a genuine out-of-memory retry, the demo model on the GPU.

These need an NVIDIA GPU and skip elsewhere with that reason (CI has none). ``benchmarks/device_check.sh``
runs them on a lent GPU machine together with the GPU benchmark.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_testlib import blob_case, cohort_cases

from audit.inference import InferenceResult, load_model, model_spec_from_dict, run_inference
from audit.inference.predict import InferenceSettings, predict_labels_with_retry
from audit.synthetic import generate_cohort

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")


def demo_model(tmp_path, **inference):
    spec = model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet", **({"inference": inference} if inference else {})}, base_dir=tmp_path)
    return load_model(spec, device="cuda")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_demo_model_on_cuda_with_amp_agrees_with_cpu(tmp_path):
    """float16 autocast on the GPU vs float32 on the CPU: at least 99.5% of voxels get the same label."""
    generate_cohort(tmp_path / "cohort", n_cases=4, seed=5)
    cases = cohort_cases(tmp_path / "cohort")
    gpu = demo_model(tmp_path, amp=True)
    cpu = load_model(model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet"}, base_dir=tmp_path), device="cpu")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    out_gpu = list(run_inference(gpu, cases, cache_dir=tmp_path / "gpu"))
    out_cpu = list(run_inference(cpu, cases, cache_dir=tmp_path / "cpu"))
    for g, c in zip(out_gpu, out_cpu):
        assert isinstance(g, InferenceResult) and isinstance(c, InferenceResult), (g, c)
        assert g.info["device"].startswith("cuda")
        a, b = np.asarray(nib.load(g.prediction_path).dataobj), np.asarray(nib.load(c.prediction_path).dataobj)
        assert agreement(a, b) >= 0.995, (g.case_id, agreement(a, b))


def test_real_cuda_out_of_memory_halves_the_batch(tmp_path):
    """A real CUDA OOM: the allocator is capped between what batch 1 and batch 64 need, so the retry is genuine."""
    net = load_model(model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet"}, base_dir=tmp_path), device="cuda").network
    image = np.random.default_rng(0).normal(size=(128, 128, 64)).astype(np.float32)  # 7 x 7 x 3 = 147 windows

    def settings(batch: int) -> InferenceSettings:
        return InferenceSettings(roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=batch, amp=False, mode="gaussian")

    def peak(batch: int) -> tuple[np.ndarray, int]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        labels, info = predict_labels_with_retry(net, image, settings(batch), device=torch.device("cuda"))
        assert info.oom_retries == 0
        return labels, torch.cuda.max_memory_allocated()

    expected, peak1 = peak(1)
    _, peak64 = peak(64)
    assert peak64 > 1.5 * peak1, f"batch 64 needs {peak64} B, batch 1 {peak1} B: too close to plant an out-of-memory"
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((peak1 + peak64) / 2 / total)
    try:
        labels, info = predict_labels_with_retry(net, image, settings(64), device=torch.device("cuda"), cpu_networks={})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert info.oom_retries >= 1 and info.sw_batch_size < 64 and info.device.startswith("cuda"), info
    assert agreement(labels, expected) >= 0.999, agreement(labels, expected)


def test_blob_case_lands_on_the_reference_grid_from_the_gpu(tmp_path):
    case = blob_case(tmp_path / "data", "lps", axcodes="LPS", seed=3)
    model = demo_model(tmp_path)
    (out,) = list(run_inference(model, [case], cache_dir=tmp_path / "cache"))
    assert isinstance(out, InferenceResult), out
    pred, ref = nib.load(out.prediction_path), nib.load(case.label_path)
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)
