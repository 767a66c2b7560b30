"""Benchmark: a CTSpine1K-size CT audit with predictions given, measured on N cases and extrapolated to 1,005.

Run: python benchmarks/bench_ct.py [--cases 10] [--workers 2] [--out /tmp/bench_ct]

Each case is a 512 x 512 x 300 CT (0.8 x 0.8 x 1.0 mm, int16 HU, gzip) with a vertebra mask of ten vertebrae
T8..L5 (VerSe codes, posterior elements included) and a "model" prediction derived from it: shifted by 0-3
voxels, one vertebra dilated or eroded, every fifth case labelled one level off, every seventh missing a
vertebra. The whole pipeline runs (sites, checks, predictions stage, coarse metrics, per-vertebra VerSe
evaluation, statistics with 1,000 cluster-bootstrap resamples, report). It prints one JSON line with the wall
time of each stage, seconds per case, the extrapolation to 1,005 cases (per-case stages scale linearly; the
statistics and report are measured once, and their growth with n is taken from benchmarks/bench_stats.py) and
the peak resident memory of this process and of its worker processes (``ru_maxrss``). On a shared machine the
wall times depend on the other jobs; the CPU seconds per stage (this process plus its live and finished workers) do not, and
``target_1005_metrics_stats_report_on_2_cores_s`` = metrics CPU per case x 1,005 / 2 + statistics and report CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import yaml

SHAPE, SPACING = (512, 512, 300), (0.8, 0.8, 1.0)
LEVELS = (15, 16, 17, 18, 19, 20, 21, 22, 23, 24)  # T8..L5


def vertebra_mask(rng: np.random.Generator) -> np.ndarray:
    """Ten vertebrae along z (pitch ~30 mm): elliptic body, arch ring, spinous process, VerSe codes."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    x = (np.arange(SHAPE[0]) - 256) * SPACING[0]
    y = (np.arange(SHAPE[1]) - 256) * SPACING[1]
    X, Y = np.meshgrid(x, y, indexing="ij")
    cx, cy = rng.uniform(-10, 10), rng.uniform(-10, 10)
    z0 = int(rng.integers(0, 10))
    for k, code in enumerate(LEVELS):
        rx, ry = 18 + k, 14 + 0.5 * k
        body = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1
        r = np.hypot(X - cx, Y - cy - ry - 9)
        post = ((r >= 8) & (r <= 13) & (Y > cy + ry - 3)) | ((np.abs(X - cx) <= 3) & (Y - cy - ry - 9 >= 12) & (Y - cy - ry - 9 <= 35))
        top = z0 + k * 29
        h = 22 + k // 3
        label[..., top : top + h][body] = code
        label[..., top + 5 : top + h - 5][post] = code
    return label


def prediction_of(label: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    pred = np.roll(label, tuple(int(v) for v in rng.integers(0, 4, 3)), axis=(0, 1, 2))
    code = int(rng.choice(LEVELS))
    box = ndimage.find_objects((pred == code).astype(np.uint8))[0]
    op = ndimage.binary_dilation if index % 2 else ndimage.binary_erosion
    region = pred[box] == code
    changed = op(region, iterations=2)
    pred[box][region & ~changed] = 0
    pred[box][changed & (pred[box] == 0)] = code
    if index % 5 == 0:
        pred = np.where(pred > 0, pred + 1, 0).astype(np.uint8)
    if index % 7 == 0:
        pred[pred == LEVELS[4]] = 0
    return pred


def write_cohort(root: Path, n: int, seed: int) -> None:
    nib.openers.Opener.default_compresslevel = 1
    affine = np.diag([*SPACING, 1.0])
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        label = vertebra_mask(rng)
        image = np.where(label > 0, 700, -1000).astype(np.int16)
        image[200:312, 180:330] = np.maximum(image[200:312, 180:330], 40)
        site = f"src{i % 4}"
        (root / "data" / site).mkdir(parents=True, exist_ok=True)
        (root / "pred" / site).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), root / "data" / site / f"ct{i:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "data" / site / f"ct{i:04d}_seg.nii.gz")
        nib.save(nib.Nifti1Image(prediction_of(label, i, rng), affine), root / "pred" / site / f"ct{i:04d}.nii.gz")
        (root / "data" / site / f"ct{i:04d}.json").write_text(json.dumps({"Manufacturer": ["GE", "SIEMENS"][i % 2], "KVP": 120, "SliceThickness": 1.0}))


def protocol_dict(root: Path, n: int) -> dict:
    sites = [{"name": f"src{k}", "format": "ctspine1k", "root": str(root / "data"), "label_map": "ctspine1k",
              "options": {"source": "COLONOG", "images_dir": f"src{k}", "labels_dir": f"src{k}"}} for k in range(min(4, n))]
    return {
        "name": "CTSpine1K-size benchmark", "version": "1", "sites": sites,
        "model": {"name": "given", "kind": "predictions", "path": str(root / "pred"), "labels": "ctspine1k", "options": {"pattern": "{site}/{local_id}.nii.gz"}},
        "structures": ["vertebra"], "metrics": {"names": ["dice", "hd95"]}, "vertebrae": {"max_distance_mm": 20.0},
        "subgroups": {"columns": ["site", "vendor", "kvp_band"]},
        "statistics": {"bootstrap_iterations": 1000, "min_group_size": 2, "adjusted_model": {"enabled": False}},
    }


def _cpu() -> float:
    """CPU seconds (user + system) of this process, its finished workers and its live workers: the time on an idle machine.

    The executor's process pool lives across stages, so its workers' CPU reaches ``RUSAGE_CHILDREN`` only when the
    pool closes; the live workers are read through psutil so that each stage is charged its own work.
    """
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # exited between the listing and the read: counted in RUSAGE_CHILDREN once reaped
            continue
        live += times.user + times.system
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_ct"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from audit.pipeline import run_audit
    from audit.protocol import protocol_from_dict

    root = args.out
    t0 = time.perf_counter()
    if not (root / "data").is_dir() or len(list((root / "pred").rglob("*.nii.gz"))) != args.cases:
        write_cohort(root, args.cases, args.seed)
    generate_s = time.perf_counter() - t0
    stages: dict[str, float] = {}
    cpu_stages: dict[str, float] = {}
    last: list = [time.perf_counter(), None, _cpu()]

    def progress(stage: str, done: int, total: int) -> None:
        now, cpu = time.perf_counter(), _cpu()
        if last[1] is not None and last[1] != stage:
            stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
            cpu_stages[last[1]] = cpu_stages.get(last[1], 0.0) + cpu - last[2]
            last[0], last[2] = now, cpu
        elif last[1] is None:
            last[0], last[2] = now, cpu
        last[1] = stage

    run = root / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    proto = protocol_from_dict(protocol_dict(root, args.cases), base_dir=root)
    (root / "protocol.yaml").write_text(yaml.safe_dump(protocol_dict(root, args.cases)))
    peak_tree = [0.0]
    done = threading.Event()

    def sample() -> None:  # resident memory of this process and its workers together, every 0.2 s
        me = psutil.Process()
        while not done.is_set():
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peak_tree[0] = max(peak_tree[0], total / 2**20)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t1 = time.perf_counter()
    summary = run_audit(proto, run_dir=run, device="cpu", workers=args.workers, progress=progress)
    wall = time.perf_counter() - t1
    done.set()
    stages[last[1]] = stages.get(last[1], 0.0) + time.perf_counter() - last[0]
    cpu_stages[last[1]] = cpu_stages.get(last[1], 0.0) + _cpu() - last[2]
    per_case_stages = sum(v for k, v in stages.items() if k in ("sites", "checks", "inference", "metrics"))
    fixed = sum(v for k, v in stages.items() if k in ("stats", "report"))
    metrics_cpu = cpu_stages.get("metrics", 0.0)
    fixed_cpu = sum(v for k, v in cpu_stages.items() if k in ("stats", "report"))
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({
        "cases": args.cases, "workers": args.workers, "cpus": os.cpu_count(), "failed": summary.n_failed,
        "generate_s": round(generate_s, 1), "wall_s": round(wall, 1), "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "per_case_s": round(per_case_stages / args.cases, 2),
        "extrapolated_1005_s": round(per_case_stages / args.cases * 1005 + fixed, 0),
        "cpu_stages_s": {k: round(v, 1) for k, v in cpu_stages.items()},
        "metrics_cpu_per_case_s": round(metrics_cpu / args.cases, 2),
        "target_1005_metrics_stats_report_on_2_cores_s": round(metrics_cpu / args.cases * 1005 / 2 + fixed_cpu, 0),
        "peak_rss_mb_main": round(peak_self), "peak_rss_mb_largest_worker": round(peak_children), "peak_rss_mb_all_processes": round(peak_tree[0]),
    }))


if __name__ == "__main__":
    main()
