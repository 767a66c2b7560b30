"""Image geometry: loading, canonical orientation, resampling, and the way back to the native grid.

Conventions
-----------
A :class:`Volume` is a 3-D array plus its 4x4 voxel-to-world affine (nibabel convention: world is RAS+ in
mm, ``world = affine @ [i, j, k, 1]``). Reorientation (:func:`reorient`) only permutes and flips axes, so it
is exact and invertible; resampling (:func:`resample_to_spacing`) changes the voxel grid and is used for
inference only. Predictions go back to any target grid (the reference label's native grid) with
:func:`resample_to_grid`, which maps every target voxel through world space to the source grid; when the
two grids differ only by axis permutations and flips (the usual case) it is an exact index shuffle.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from audit.harmonize.limits import ReadLimits
from audit.harmonize.loading import load_nifti

logger = logging.getLogger(__name__)

__all__ = [
    "LPS_TO_RAS",
    "Volume",
    "file_sha256",
    "load_volume",
    "volume_from_bytes",
    "orientation_of",
    "reorient",
    "resample_to_spacing",
    "resample_to_grid",
    "save_volume",
]

_AXCODES = {"L", "R", "A", "P", "S", "I"}

#: DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS), and back (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Volume:
    """A 3-D image or label array with its voxel-to-world affine.

    Parameters
    ----------
    array : numpy.ndarray
        Voxel values, shape ``(X, Y, Z)``.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+ mm) matrix.
    """

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume: array must be 3-D; got shape {self.array.shape}")
        if np.shape(self.affine) != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise ValueError(f"Volume: affine must be a finite 4x4 matrix; got {np.asarray(self.affine)!r}")
        if abs(np.linalg.det(np.asarray(self.affine)[:3, :3])) < 1e-12:
            raise ValueError("Volume: affine is singular (zero voxel size or collinear axes)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes, e.g. ``"PIR"``."""
        return orientation_of(self.affine)


def orientation_of(affine: np.ndarray) -> str:
    """Return the orientation codes of an affine (``"RAS"``, ``"PIR"``, ...)."""
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def volume_from_bytes(data: bytes, *, name: str = "<bytes>", dtype: type | None = None, limits: ReadLimits | None = None, role: str = "image") -> Volume:
    """Decode NIfTI bytes (gzip-compressed or not) into a :class:`Volume` through the guarded reader.

    Parameters
    ----------
    data : bytes
        File content.
    name : str
        File name for error messages.
    dtype : numpy dtype, optional
        Cast the voxel values (``np.float32`` for images); ``None`` keeps the stored dtype
        after scaling (labels keep their integer type when the file has no scaling).
    limits : ReadLimits, optional
        Voxel and memory budget checked from the header before decompression
        (:mod:`audit.harmonize.loading`).
    role : str
        ``image``, ``label`` or ``prediction``, named in error messages.

    Raises
    ------
    ValueError
        The guarded reader's errors (corrupt, over budget, no geometry, not 3-D, non-finite voxels).
    """
    loaded = load_nifti(data, name=name, limits=limits, role=role)
    array = loaded.array if dtype is None else loaded.array.astype(dtype, copy=False)
    return Volume(array=np.ascontiguousarray(array), affine=loaded.affine)


def load_volume(path: str | Path, *, dtype: type | None = None, limits: ReadLimits | None = None, role: str = "image") -> Volume:
    """Load a NIfTI file as a :class:`Volume` (see :func:`volume_from_bytes` for ``dtype`` and ``limits``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a usable 3-D NIfTI image (see :mod:`audit.harmonize.loading`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_volume: no such file {str(path)!r}")
    loaded = load_nifti(path, limits=limits, role=role)
    array = loaded.array if dtype is None else loaded.array.astype(dtype, copy=False)
    return Volume(array=np.ascontiguousarray(array), affine=loaded.affine)


def reorient(volume: Volume, orientation: str = "RAS") -> Volume:
    """Permute and flip axes so the array has ``orientation`` (exact; no interpolation).

    The world position of every voxel is unchanged; the returned affine describes the new array.
    """
    codes = orientation.upper()
    if len(codes) != 3 or set(codes) - _AXCODES or len({_axis_of(c) for c in codes}) != 3:
        raise ValueError(f"reorient: orientation must be 3 distinct axis codes from L/R, A/P, S/I (e.g. 'RAS'); got {orientation!r}")
    start = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    transform = nib.orientations.ornt_transform(start, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return Volume(np.ascontiguousarray(array), affine)


def _axis_of(code: str) -> int:
    return {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}[code]


def resample_to_spacing(volume: Volume, spacing: tuple[float, float, float] | list[float], *, order: int = 1) -> Volume:
    """Resample to voxel size ``spacing`` (mm, per array axis) keeping the field-of-view centre.

    Parameters
    ----------
    volume : Volume
        Input (usually already in canonical orientation).
    spacing : sequence of 3 floats
        Target voxel size per array axis; ``<= 0`` or NaN entries keep that axis' spacing.
    order : int
        Spline order: 1 (linear) for images, 0 (nearest) for labels.
    """
    if len(spacing) != 3:
        raise ValueError(f"resample_to_spacing: spacing must have 3 values; got {list(spacing)}")
    old = np.asarray(volume.spacing)
    new = np.array([o if not (s > 0) else float(s) for s, o in zip(spacing, old)])
    if np.allclose(new, old, rtol=1e-4, atol=1e-6):
        return volume
    ratio = new / old  # old-grid voxels per new-grid voxel
    shape_old = np.asarray(volume.shape, dtype=float)
    shape_new = np.maximum(1, np.round(shape_old / ratio)).astype(int)
    offset = 0.5 * (shape_old - 1) - 0.5 * (shape_new - 1) * ratio
    src = volume.array if order == 0 else volume.array.astype(np.float32, copy=False)
    array = ndimage.affine_transform(src, ratio, offset=offset, output_shape=tuple(shape_new), order=order, mode="nearest")
    step = np.eye(4)
    step[:3, :3] = np.diag(ratio)
    step[:3, 3] = offset
    return Volume(array, volume.affine @ step)


def _index_map(source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Matrix taking target voxel indices to source voxel indices."""
    return np.linalg.inv(source_affine) @ target_affine


def resample_to_grid(
    array: np.ndarray,
    source_affine: np.ndarray,
    target_shape: tuple[int, ...],
    target_affine: np.ndarray,
    *,
    order: int = 0,
    cval: float = 0.0,
) -> np.ndarray:
    """Sample ``array`` (on ``source_affine``) onto the grid ``(target_shape, target_affine)``.

    Every target voxel centre is mapped through world space into the source grid. Nearest neighbour
    (``order=0``) keeps label values; target voxels outside the source field of view get ``cval``.
    When the grids differ only by a signed axis permutation with integer offsets, the result is an
    exact index shuffle (no interpolation, no floating-point rounding).
    """
    target_shape = tuple(int(s) for s in target_shape)
    if len(target_shape) != 3:
        raise ValueError(f"resample_to_grid: target_shape must be 3-D; got {target_shape}")
    m = _index_map(np.asarray(source_affine, float), np.asarray(target_affine, float))
    exact = _exact_shuffle(array, m, target_shape)
    if exact is not None:
        return exact
    return ndimage.affine_transform(
        array, m[:3, :3], offset=m[:3, 3], output_shape=target_shape, order=order, mode="grid-constant", cval=cval
    ).astype(array.dtype, copy=False)


def _exact_shuffle(array: np.ndarray, m: np.ndarray, target_shape: tuple[int, int, int]) -> np.ndarray | None:
    rot = m[:3, :3]
    perm = np.rint(rot)
    if not np.allclose(rot, perm, atol=1e-4) or not np.array_equal(np.abs(perm).sum(axis=0), [1, 1, 1]):
        return None
    if not np.array_equal(np.abs(perm).sum(axis=1), [1, 1, 1]) or not np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=1e-3):
        return None
    # target index t maps to source index s = perm @ t + off; build index arrays per axis.
    off = np.rint(m[:3, 3]).astype(int)
    grids = np.ogrid[tuple(slice(0, n) for n in target_shape)]
    src_idx = []
    for i in range(3):
        j = int(np.flatnonzero(perm[i])[0])
        src_idx.append(int(perm[i, j]) * grids[j] + off[i])
    valid = np.ones(target_shape, dtype=bool)
    for i, idx in enumerate(src_idx):
        valid &= (idx >= 0) & (idx < array.shape[i])
    clipped = [np.clip(idx, 0, array.shape[i] - 1) for i, idx in enumerate(src_idx)]
    out = array[tuple(clipped)]
    if not valid.all():
        out = np.where(valid, out, np.zeros((), dtype=array.dtype))
    return np.ascontiguousarray(out)


def save_volume(array: np.ndarray, affine: np.ndarray, path: str | Path, *, header: nib.Nifti1Header | None = None) -> Path:
    """Write ``array`` as NIfTI with ``affine`` atomically (temporary file in the same folder, then rename).

    The qform and sform are both set to ``affine`` so every reader sees the same geometry.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64), header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    # thread id too: two threads of one process may write the same cache key (identical inputs) at once;
    # the pid stays last before ".tmp" (audit.inference.cache.clean_temporary_files reads it)
    tmp = path.with_name(f".{path.name}.t{threading.get_ident()}.{os.getpid()}.tmp{suffix}")
    try:
        if suffix == ".nii.gz":
            # compresslevel 1: labels compress well and level 6 costs ~5x the time for ~5% smaller files
            buf = io.BytesIO()
            file_map = img.make_file_map({"image": buf, "header": buf})
            img.to_file_map(file_map)
            tmp.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))
        else:
            nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
