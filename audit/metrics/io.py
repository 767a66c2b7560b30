"""Loading label volumes without float conversion (through the guarded reader of :mod:`audit.harmonize.loading`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from audit.harmonize.limits import ReadLimits
from audit.harmonize.loading import load_label_array

logger = logging.getLogger(__name__)

__all__ = ["load_labels", "load_labels_with_affine"]


def load_labels(path: str | Path, *, limits: ReadLimits | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """:func:`load_labels_with_affine` without the affine."""
    arr, spacing, _ = load_labels_with_affine(path, limits=limits)
    return arr, spacing


def load_labels_with_affine(
    path: str | Path, *, limits: ReadLimits | None = None, role: str = "label"
) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Load a NIfTI label file as an integer array, its voxel spacing in mm (array-axis order) and its affine.

    The file goes through :func:`audit.harmonize.loading.load_label_array`: the header is checked against
    ``limits`` before any voxel is read, the grid must be 3-D with an sform or qform, and the values must be
    finite integers. A file stored as floats, or with a scale factor, is accepted only when every value is an
    integer, and is converted to the smallest fitting integer type. Trailing singleton dimensions
    (``x, y, z, 1``) are dropped. The spacing is the affine's column norms.

    Raises
    ------
    ValueError
        :class:`~audit.harmonize.loading.ImageDataError` for non-integer label values (and the other
        errors of the guarded reader).
    """
    data = load_label_array(path, role=role, limits=limits)
    return data.array, data.spacing, data.affine
