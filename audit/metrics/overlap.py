"""Overlap and volume metrics on boolean masks (pure functions)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["dice", "iou", "dice_slicewise_cspineseg"]


def dice(n_ref: int, n_pred: int, n_both: int) -> float:
    """Dice 2|A∩B| / (|A| + |B|) from voxel counts; NaN when both are empty (the caller's policy decides)."""
    total = n_ref + n_pred
    return float(2.0 * n_both / total) if total else float("nan")


def iou(n_ref: int, n_pred: int, n_both: int) -> float:
    """Intersection over union |A∩B| / |A∪B| from voxel counts; NaN when both are empty."""
    union = n_ref + n_pred - n_both
    return float(n_both / union) if union else float("nan")


def dice_slicewise_cspineseg(
    reference: np.ndarray, prediction: np.ndarray, *, slice_axis: int, n_slices_total: int | None = None
) -> float:
    """CSpineSeg's published Dice: the mean over 2D slices of the per-slice Dice, slices empty in both scored 1.

    Parameters
    ----------
    reference, prediction : numpy.ndarray
        Boolean masks (possibly cropped along ``slice_axis``).
    slice_axis : int
        Axis indexing the 2D slices.
    n_slices_total : int, optional
        Number of slices of the full image along ``slice_axis``. Slices outside the crop are empty in
        both masks and score 1. Default: ``reference.shape[slice_axis]`` (no crop).

    Notes
    -----
    Reproduces ``calculate_nifti_all_labels_dice_score`` of the CSpineSeg code
    (github.com/JikaiZ/CSpineSeg, ``DSC_analysis.ipynb``), which slices along the last axis of the NIfTI
    array and divides by the number of slices of the whole volume.
    """
    n_total = reference.shape[slice_axis] if n_slices_total is None else int(n_slices_total)
    other = tuple(a for a in range(reference.ndim) if a != slice_axis)
    ref_s = np.count_nonzero(reference, axis=other)
    pred_s = np.count_nonzero(prediction, axis=other)
    both_s = np.count_nonzero(reference & prediction, axis=other)
    denom = ref_s + pred_s
    per_slice = np.ones(denom.shape, dtype=np.float64)
    nz = denom > 0
    per_slice[nz] = 2.0 * both_s[nz] / denom[nz]
    outside = n_total - reference.shape[slice_axis]
    return float((per_slice.sum() + outside) / n_total)
