"""Benchmark the inference engine with the packaged demo model on a synthetic cohort.

Prints one JSON line: device name, cases per second (cold: computed; warm: all cache hits), and the
per-phase time breakdown (load, hash, preprocess, infer, postprocess, write; seconds per case, mean).

Usage::

    python benchmarks/bench_inference.py --n-cases 48 --device cpu --workers 1
    python benchmarks/bench_inference.py --device cuda --n-cases 200 --workers 4   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from audit.inference import BUILTIN_MODELS, InferenceCase, InferenceResult, load_model, model_spec_from_dict, run_inference
from audit.synthetic import cohort_case_files, generate_cohort

PHASES = ("load", "hash", "preprocess", "infer", "postprocess", "write")


def _cases(cohort: Path) -> list[InferenceCase]:
    return [InferenceCase(case_id, image, label, site=site) for case_id, image, label, site in cohort_case_files(cohort)]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cases", type=int, default=48)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--workers", type=int, default=1, help="prefetch/write threads")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--amp", choices=["on", "off", "card"], default="card")
    parser.add_argument("--sw-batch-size", type=int, default=0, help="0: the model card's value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict = {}
    if args.amp != "card":
        overrides["amp"] = args.amp == "on"
    if args.sw_batch_size:
        overrides["sw_batch_size"] = args.sw_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        generate_cohort(tmp_path / "cohort", n_cases=args.n_cases, seed=123)
        generation_s = time.perf_counter() - t0
        cases = _cases(tmp_path / "cohort")
        card = json.loads(BUILTIN_MODELS["demo-unet"].read_text())
        spec = model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet", "inference": {**card["inference"], **overrides}}, base_dir=tmp_path)
        t0 = time.perf_counter()
        model = load_model(spec, device=args.device)
        load_model_s = time.perf_counter() - t0
        # warm-up (first call allocates, cuDNN autotunes); not counted
        list(run_inference(model, cases[:1], cache_dir=tmp_path / "warmup"))
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        cold = list(run_inference(model, cases, cache_dir=tmp_path / "cache", workers=args.workers))
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = list(run_inference(model, cases, cache_dir=tmp_path / "cache", workers=args.workers))
        warm_s = time.perf_counter() - t0
    ok = [r for r in cold if isinstance(r, InferenceResult)]
    breakdown = {p: round(float(np.mean([r.timings.get(p, 0.0) for r in ok])), 4) for p in PHASES}
    # share of the cold run's wall time in which the network ran (the rest: waiting on loading, writing, Python)
    compute_share = float(np.sum([r.timings.get("infer", 0.0) for r in ok])) / cold_s if cold_s > 0 else float("nan")
    print(json.dumps({
        "benchmark": "inference",
        "device": str(model.device),
        "device_name": _device_name(model.device),
        "torch": torch.__version__,
        "n_cases": len(cases),
        "failures": len(cold) - len(ok),
        "workers": args.workers,
        "amp": spec.inference.amp,
        "cases_per_s": round(len(cases) / cold_s, 3),
        "cached_cases_per_s": round(len(cases) / warm_s, 3) if all(getattr(r, "cached", False) for r in warm) else None,
        "wall_s": round(cold_s, 3),
        "seconds_per_case_by_phase": breakdown,
        "compute_share_of_wall": round(compute_share, 3),
        "model_load_s": round(load_model_s, 3),
        "cohort_generation_s": round(generation_s, 3),
    }))


if __name__ == "__main__":
    main()
