"""The per-file read budget: how many voxels and bytes an image header may declare before anything is read.

One rule (:func:`check_budget`) for every format: the guarded NIfTI reader (:mod:`audit.harmonize.loading`)
checks it from the header, the DICOM series reader from Rows x Columns x slices. The protocol's ``limits``
section is a :class:`ReadLimits`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["DEFAULT_MAX_VOXELS", "DEFAULT_MAX_MEMORY_MB", "ImageTooLargeError", "ReadLimits", "check_budget"]

#: Default voxel budget per file: 1e9 voxels (a 1000^3 volume; whole-spine CT at 512x512x2000 is 5.2e8).
DEFAULT_MAX_VOXELS = 1_000_000_000
#: Default budget for one file's decompressed voxel data (shape x stored dtype size), in MiB (4 GiB).
DEFAULT_MAX_MEMORY_MB = 4096.0


class ImageTooLargeError(ValueError):
    """A file whose header declares more voxels or bytes than the protocol's ``limits`` allow."""


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """The per-file budget checked from the header before any voxel is read (protocol section ``limits``).

    Parameters
    ----------
    max_voxels : int
        Largest number of voxels a file may declare.
    max_memory_mb : float
        Largest decompressed voxel data (declared shape x stored dtype size) a file may declare, in MiB.
        Reading holds about twice this transiently (the decompressed bytes and the array).
    """

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_memory_mb: float = DEFAULT_MAX_MEMORY_MB

    def __post_init__(self) -> None:
        if isinstance(self.max_voxels, bool) or not isinstance(self.max_voxels, int) or self.max_voxels < 1:
            raise ValueError(f"max_voxels: must be a positive integer; found {self.max_voxels!r}")
        if isinstance(self.max_memory_mb, bool) or not isinstance(self.max_memory_mb, (int, float)) or not (0 < self.max_memory_mb < math.inf):
            raise ValueError(f"max_memory_mb: must be a positive finite number of MiB; found {self.max_memory_mb!r}")

    @property
    def max_bytes(self) -> int:
        """``max_memory_mb`` in bytes."""
        return int(self.max_memory_mb * 2**20)


def check_budget(shape: tuple[int, ...], dtype: np.dtype, limits: ReadLimits, *, what: str) -> None:
    """Refuse a declared voxel array larger than ``limits`` before anything is allocated (the one budget rule).

    Used for NIfTI headers and for DICOM series (Rows x Columns x slices, from the headers alone).

    Examples
    --------
    >>> check_budget((2, 3, 4), np.dtype("int16"), ReadLimits(max_voxels=100), what="image a.nii")
    >>> check_budget((2, 3, 4), np.dtype("int16"), ReadLimits(max_voxels=10), what="image a.nii")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    audit.harmonize.limits.ImageTooLargeError: image a.nii: header declares shape (2, 3, 4) = 24 voxels; limits.max_voxels is 10
    """
    n_voxels = math.prod(int(n) for n in shape)
    n_bytes = n_voxels * np.dtype(dtype).itemsize
    if n_voxels > limits.max_voxels:
        raise ImageTooLargeError(f"{what}: header declares shape {tuple(shape)} = {n_voxels:.4g} voxels; limits.max_voxels is {limits.max_voxels}")
    if n_bytes > limits.max_bytes:
        raise ImageTooLargeError(
            f"{what}: header declares {n_bytes / 2**20:.1f} MiB of voxel data (shape {tuple(shape)}, {np.dtype(dtype)}); "
            f"limits.max_memory_mb is {limits.max_memory_mb:g}"
        )
