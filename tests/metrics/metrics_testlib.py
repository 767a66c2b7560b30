"""Shared builders and the MONAI oracle for the metric tests (imported by test files in this folder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def monai_oracle(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerances: Sequence[float] = (1.0, 2.0)) -> dict[str, float]:
    """Dice, HD, HD95, ASSD and NSD of two non-empty boolean masks computed by MONAI (the independent oracle)."""
    y = torch.from_numpy(ref.astype(np.float32))[None, None]
    yp = torch.from_numpy(pred.astype(np.float32))[None, None]
    sp = [float(s) for s in spacing]
    out = {
        "dice": float(compute_dice(yp, y, include_background=True)[0, 0]),
        "hd": float(compute_hausdorff_distance(yp, y, include_background=True, spacing=sp)[0, 0]),
        "hd95": float(compute_hausdorff_distance(yp, y, include_background=True, percentile=95, spacing=sp)[0, 0]),
        "assd": float(compute_average_surface_distance(yp, y, include_background=True, symmetric=True, spacing=sp)[0, 0]),
    }
    for tol in tolerances:
        out[f"nsd_{tol:g}mm"] = float(compute_surface_dice(yp, y, [tol], include_background=True, spacing=sp)[0, 0])
    return out


def random_blob(shape: Sequence[int], seed: int, *, smooth: float = 2.0, threshold: float = 0.6) -> np.ndarray:
    """A random smooth blob: Gaussian-filtered noise above a quantile (irregular, possibly several pieces)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    return field > np.quantile(field, threshold)


def two_cubes_shifted_by(k: int, *, size: int = 6, shape: tuple[int, int, int] = (20, 20, 20), axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two equal cubes, the second shifted by ``k`` voxels along ``axis`` (uint8 label arrays, label 1)."""
    ref = np.zeros(shape, dtype=np.uint8)
    lo = 5
    ref[lo : lo + size, lo : lo + size, lo : lo + size] = 1
    pred = np.roll(ref, k, axis=axis)
    return ref, pred
