"""Loading label volumes without float conversion."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["load_labels", "load_labels_with_affine"]


def load_labels(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """:func:`load_labels_with_affine` without the affine."""
    arr, spacing, _ = load_labels_with_affine(path)
    return arr, spacing


def load_labels_with_affine(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Load a NIfTI label file as an integer array, its voxel spacing in mm (array-axis order) and its affine.

    The array is read through ``img.dataobj`` (never ``get_fdata``), so integer labels stay integers.
    A file stored as floats, or with a scale factor, is accepted only when every value is an integer,
    and is converted to the smallest fitting integer type.

    Trailing singleton dimensions (``x, y, z, 1``) are dropped.

    Raises
    ------
    ValueError
        If the file holds non-integer label values.
    """
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)
    while arr.ndim > 3 and arr.shape[-1] == 1:  # (x, y, z, 1) label files written by some tools
        arr = arr[..., 0]
    spacing = tuple(float(z) for z in img.header.get_zooms()[: arr.ndim])
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr, spacing, img.affine  # NIfTI order (Fortran) kept: a C-order copy of a CT mask costs ~1 s
    if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"path: {path} holds non-integer label values (dtype {arr.dtype}); expected a label map")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    dtype = np.result_type(np.min_scalar_type(int(lo)), np.min_scalar_type(int(hi)))
    logger.debug("load_labels: %s stored as %s, converted to %s", path, arr.dtype, dtype)
    return np.ascontiguousarray(arr.astype(dtype)), spacing, img.affine
