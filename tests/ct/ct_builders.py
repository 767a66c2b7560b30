"""Named builders of hand-checkable CT label arrays (VerSe codes) for the per-vertebra tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Blocks of 10 x 10 x 10 voxels at 1 mm, one every PITCH_MM along axis 2 (superior first).
PITCH_MM = 30
BLOCK = 10


def block_spine(codes: Sequence[int], *, pitch: int = PITCH_MM, margin: int = 25) -> np.ndarray:
    """One 10-voxel cube per code, centred at z = margin + 5 + k * pitch (1 mm voxels); centroids are exact."""
    depth = 2 * margin + pitch * (len(codes) - 1) + BLOCK
    arr = np.zeros((20, 20, depth), dtype=np.uint8)
    for k, code in enumerate(codes):
        z0 = margin + k * pitch
        arr[5:15, 5:15, z0 : z0 + BLOCK] = code
    return arr


def shifted_by(arr: np.ndarray, voxels: int, axis: int = 2) -> np.ndarray:
    """The array moved by ``voxels`` along ``axis`` with zero fill (no wrap-around)."""
    out = np.zeros_like(arr)
    src = [slice(None)] * arr.ndim
    dst = [slice(None)] * arr.ndim
    if voxels >= 0:
        src[axis], dst[axis] = slice(0, arr.shape[axis] - voxels), slice(voxels, None)
    else:
        src[axis], dst[axis] = slice(-voxels, None), slice(0, arr.shape[axis] + voxels)
    out[tuple(dst)] = arr[tuple(src)]
    return out


def relabelled(arr: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Every value ``k`` of ``mapping`` replaced by ``mapping[k]`` (simultaneously)."""
    out = arr.copy()
    for old, new in mapping.items():
        out[arr == old] = new
    return out


def one_vertebra_moved(arr: np.ndarray, code: int, voxels: int, axis: int = 2) -> np.ndarray:
    """Only vertebra ``code`` moved by ``voxels`` along ``axis``."""
    out = np.where(arr == code, 0, arr).astype(arr.dtype)
    moved = shifted_by(np.where(arr == code, code, 0).astype(arr.dtype), voxels, axis)
    return np.where(moved > 0, moved, out).astype(arr.dtype)


def verse_get_hits_oracle(gt: dict[int, np.ndarray], pred: dict[int, np.ndarray]) -> dict[int, bool]:
    """A literal transcription of VerSe's get_hits (distance matrix, row-wise argmin, diagonal <= 20 mm)."""
    both = sorted(set(gt) & set(pred))
    out = {v: False for v in gt}
    if not both:
        return out
    d = np.array([[np.linalg.norm(pred[i] - gt[j]) for j in both] for i in both])
    keep = np.full(d.shape, np.nan)
    rows = np.arange(len(both))
    keep[rows, np.argmin(d, axis=1)] = d[rows, np.argmin(d, axis=1)]
    diag = np.diagonal(keep).copy()
    diag[diag > 20.0] = np.nan
    for v, x in zip(both, diag):
        out[v] = not np.isnan(x)
    return out
