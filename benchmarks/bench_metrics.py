"""Benchmark audit.metrics against MONAI's metric functions on the same inputs.

Run: ``python benchmarks/bench_metrics.py [--repeats 5] [--skip-monai-ct]``. Pins itself to one CPU core.
Cases (synthetic, label layout of a real spine scan):

* MRI: 320x320x24 voxels, 0.5x0.5x4.0 mm, 13 structures (7 vertebral bodies + 6 discs, instance labels);
* CT: 512x512x200 voxels, 0.8x0.8x1.5 mm, 13 structures (vertebrae + discs).

The prediction is the reference with per-structure shifts, a dilation, an erosion and a missing level,
so every code path (ok, missed) runs. Metrics: dice, iou, hd, hd95, assd, nsd_1mm, nsd_2mm,
rel_volume_error, abs_volume_error_ml, dice_slicewise_cspineseg. MONAI computes the same surface and
overlap metrics (one call per metric and structure, single-channel tensors), and both results are
checked to agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch
from scipy import ndimage

from audit.metrics import compute_case_metrics

METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd_1mm", "nsd_2mm", "rel_volume_error", "abs_volume_error_ml", "dice_slicewise_cspineseg")


def spine_case(shape, spacing, si_axis, n_levels, body_mm, disc_mm, width_mm, seed=0):
    """Alternating vertebral bodies (labels 1..) and discs (101..) stacked along ``si_axis``."""
    order = [si_axis] + [a for a in range(3) if a != si_axis]
    ref, pred, structures = _spine_case_axis0(
        tuple(shape[a] for a in order), tuple(spacing[a] for a in order), n_levels, body_mm, disc_mm, width_mm, seed
    )
    back = np.argsort(order)
    return np.ascontiguousarray(ref.transpose(back)), np.ascontiguousarray(pred.transpose(back)), structures


def _spine_case_axis0(shape, spacing, n_levels, body_mm, disc_mm, width_mm, seed):
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c1, c2 = shape[1] / 2, shape[2] / 2
    r1, r2 = width_mm / 2 / spacing[1], width_mm / 2 / spacing[2]
    inplane = ((yy - c1) / r1) ** 2 + ((xx - c2) / r2) ** 2 <= 1.0
    z = 5.0
    labels = []
    for i in range(n_levels):
        for kind, height in (("body", body_mm), ("disc", disc_mm)):
            if len(labels) == 13:
                break
            n = max(int(round(height / spacing[0])), 1)
            value = (i + 1) if kind == "body" else (101 + i)
            ref[int(z) : int(z) + n] = np.where(inplane[0], value, ref[int(z) : int(z) + n])
            labels.append(value)
            z += n
    pred = ref.copy()
    for k, value in enumerate(labels):
        m = ref == value
        if k == 5:
            pred[m] = 0  # a missed level
        elif k % 3 == 0:
            pred[m] = 0
            pred[np.roll(m, int(rng.integers(1, 3)), axis=1)] = value
        elif k % 3 == 1:
            pred[ndimage.binary_dilation(m, iterations=1) & (pred == 0)] = value
        else:
            pred[m & ~ndimage.binary_erosion(m)] = 0
    return ref, pred, {f"s{v}": (v,) for v in labels}


def time_it(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def ours(ref, pred, spacing, structures):
    return compute_case_metrics(ref, pred, spacing=spacing, structures=structures, metrics=METRICS)


def monai_all(ref, pred, spacing, structures):
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    out = {}
    sp = list(spacing)
    for name, (value,) in structures.items():
        y = torch.from_numpy(ref == value)[None, None].float()
        yp = torch.from_numpy(pred == value)[None, None].float()
        out[(name, "dice")] = float(compute_dice(yp, y)[0, 0])
        out[(name, "iou")] = float(compute_iou(yp, y)[0, 0])
        out[(name, "hd")] = float(compute_hausdorff_distance(yp, y, spacing=sp)[0, 0])
        out[(name, "hd95")] = float(compute_hausdorff_distance(yp, y, percentile=95, spacing=sp)[0, 0])
        out[(name, "assd")] = float(compute_average_surface_distance(yp, y, symmetric=True, spacing=sp)[0, 0])
        out[(name, "nsd_1mm")] = float(compute_surface_dice(yp, y, [1.0], spacing=sp)[0, 0])
        out[(name, "nsd_2mm")] = float(compute_surface_dice(yp, y, [2.0], spacing=sp)[0, 0])
    return out


def check_agreement(table, monai_out):
    ok = table[table["status"] == "ok"].set_index(["structure", "metric"])["value"]
    diffs = [abs(ok[k] - v) for k, v in monai_out.items() if k in ok.index]
    return max(diffs), len(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--monai-repeats", type=int, default=2)
    parser.add_argument("--skip-monai-ct", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI's internal deprecation notices
    warnings.filterwarnings("ignore", category=UserWarning)  # MONAI: empty prediction of the missed level
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, cpu {platform.processor() or platform.machine()}, 1 core")
    cases = {
        # sagittal MRI: superior-inferior along in-plane axis 0, 4 mm slices along axis 2
        "MRI 320x320x24, 0.5x0.5x4.0 mm, 13 structures": ((320, 320, 24), (0.5, 0.5, 4.0), 0, 7, 16.0, 6.0, 40.0),
        # axial CT: superior-inferior along axis 2
        "CT 512x512x200, 0.8x0.8x1.5 mm, 13 structures": ((512, 512, 200), (0.8, 0.8, 1.5), 2, 7, 24.0, 6.0, 45.0),
    }
    for title, (shape, spacing, si_axis, n_levels, body, disc, width) in cases.items():
        ref, pred, structures = spine_case(shape, spacing, si_axis, n_levels, body, disc, width)
        statuses = ours(ref, pred, spacing, structures).drop_duplicates("structure")["status"].value_counts().to_dict()
        print(f"{title}: structure statuses {statuses}")
        ours(ref, pred, spacing, structures)  # warm-up
        table, t_ours = time_it(lambda: ours(ref, pred, spacing, structures), args.repeats)
        line = f"{title}: audit.metrics median {statistics.median(t_ours):.4f} s (min {min(t_ours):.4f}, n={args.repeats})"
        if args.skip_monai_ct and shape[2] == 200:
            print(line + "; MONAI skipped")
            continue
        monai_out, t_monai = time_it(lambda: monai_all(ref, pred, spacing, structures), args.monai_repeats)
        max_diff, n = check_agreement(table, monai_out)
        speedup = statistics.median(t_monai) / statistics.median(t_ours)
        print(f"{line}; MONAI median {statistics.median(t_monai):.3f} s (n={args.monai_repeats}); speed-up {speedup:.0f}x; "
              f"max |difference| over {n} values {max_diff:.2e}")


if __name__ == "__main__":
    main()
