"""The one guarded reader for every image, label and prediction file the package opens.

Every NIfTI file is untrusted input. Before any voxel is allocated, the header is parsed from the first
bytes of the (streamed) file and checked against a :class:`ReadLimits` budget: the number of voxels and
the bytes of voxel data the header declares. A 64-byte file declaring a 30000^3 volume, or a gzip bomb
with an honest header, is refused from its header. The voxel data is then decompressed as a stream with
a cap at the size the header declares, so a header that lies about its size cannot exhaust memory
either: a file holding more data than its header declares is refused after one extra byte.

The header must also describe a usable 3-D grid: at most three non-singleton spatial dimensions
(trailing singleton dimensions such as ``(x, y, z, 1)`` are dropped, 2-D and 4-D data are refused), an
sform or a qform (a file without either has no world geometry), and a finite, non-singular affine.
Voxel values must be finite, and label files (references and predictions) must hold integers.

Errors are ``FileNotFoundError`` (missing file), :class:`CorruptImageError` (unreadable or truncated file), :class:`ImageTooLargeError`
(over budget) and :class:`ImageDataError` (readable but unusable: bad geometry, dimensions or values);
all are ``ValueError`` subclasses that name the role, the file, the field and the value found, and the
pipeline records them as per-case failures.

Example
-------
>>> import numpy as np, nibabel as nib, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "lab.nii.gz"
>>> nib.save(nib.Nifti1Image(np.eye(4, dtype=np.uint8)[..., None].repeat(2, 2), np.eye(4)), path)
>>> read_header(path, role="label").shape
(4, 4, 2)
>>> int(load_nifti(path, role="label").array.sum())
8
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

from audit.harmonize.limits import ImageTooLargeError, ReadLimits, check_budget

logger = logging.getLogger(__name__)

__all__ = [
    "CorruptImageError",
    "ImageDataError",
    "NiftiHeader",
    "NiftiData",
    "read_header",
    "read_file_bytes",
    "load_nifti",
    "load_label_array",
]

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_SIZES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_CHUNK = 1 << 22  # 4 MiB: the largest block read (and allocated) beyond what the header declares


class CorruptImageError(ValueError):
    """An image file that cannot be read completely (truncated gzip, bad header, unknown format)."""


class ImageDataError(ValueError):
    """A readable file whose content is unusable: no geometry, a NaN affine, 2-D/4-D data, NaN voxels, non-integer labels."""


@dataclasses.dataclass(frozen=True)
class NiftiHeader:
    """What a header declares, checked against the budget and the geometry rules.

    Attributes
    ----------
    name : str
        File name used in messages.
    header : nibabel header
        The parsed header (``vox_offset`` as stored).
    shape : tuple of int
        Spatial shape (trailing singleton dimensions dropped; always 3-D).
    dtype : numpy.dtype
        Stored voxel type.
    affine : numpy.ndarray
        The voxel-to-world matrix (sform when set, else qform).
    data_offset, data_bytes : int
        Where the voxel data starts and how many bytes it declares.
    """

    name: str
    header: nib.Nifti1Header
    shape: tuple[int, int, int]
    dtype: np.dtype
    affine: np.ndarray
    data_offset: int
    data_bytes: int

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (affine column norms)."""
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class NiftiData:
    """A fully read file: its checked header and the voxel array (3-D, scaled as the header says, finite)."""

    header: NiftiHeader
    array: np.ndarray

    @property
    def image(self) -> nib.Nifti1Image:
        """An in-memory nibabel image of the array with the checked affine (for nibabel's reorientation helpers)."""
        return nib.Nifti1Image(self.array, self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The 3-D array shape."""
        return self.header.shape

    @property
    def affine(self) -> np.ndarray:
        """The checked voxel-to-world matrix."""
        return self.header.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return self.header.spacing


def _stream(data: bytes | BinaryIO) -> BinaryIO:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = io.BytesIO(data)
    magic = data.read(2)
    data.seek(0)
    return gzip.GzipFile(fileobj=data, mode="rb") if magic == _GZIP_MAGIC else data  # type: ignore[return-value]


def _read(stream: BinaryIO, n: int, name: str, role: str) -> bytes:
    """Read exactly ``n`` bytes (or fewer at the end of the stream) in bounded blocks."""
    parts, left = [], n
    try:
        while left > 0:
            block = stream.read(min(left, _CHUNK))
            if not block:
                break
            parts.append(block)
            left -= len(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptImageError(f"{role} {name}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return b"".join(parts)


def _parse_header(head: bytes, name: str, role: str, limits: ReadLimits) -> NiftiHeader:
    if len(head) < 348:
        raise CorruptImageError(f"{role} {name}: cannot be read (file holds {len(head)} bytes; a NIfTI header needs 348)")
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    klass = next((k for s, k in _HEADER_SIZES.items() if s in sizes), None)
    if klass is None:
        raise CorruptImageError(f"{role} {name}: cannot be read (not a NIfTI-1 or NIfTI-2 file: sizeof_hdr is neither 348 nor 540)")
    size = 348 if klass is nib.Nifti1Header else 540
    if len(head) < size:
        raise CorruptImageError(f"{role} {name}: cannot be read (truncated NIfTI-2 header: {len(head)} of 540 bytes)")
    try:
        header = klass(head[:size], check=False)
        full_shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header["vox_offset"])
    except Exception as exc:  # noqa: BLE001 - nibabel raises HeaderDataError, KeyError, ValueError for bad fields
        raise CorruptImageError(f"{role} {name}: cannot be read (bad header field: {type(exc).__name__}: {exc})") from exc
    magic = bytes(np.asarray(header["magic"]).tobytes()).rstrip(b"\0")[:3]
    if magic not in (b"n+1", b"n+2"):
        raise CorruptImageError(f"{role} {name}: cannot be read (magic {magic!r}: only single-file NIfTI (.nii, .nii.gz) is read, not .hdr/.img pairs)")
    if any(n < 0 for n in full_shape):
        raise CorruptImageError(f"{role} {name}: cannot be read (negative dimension in the declared shape {full_shape})")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ImageDataError(f"{role} {name}: voxel type {dtype} is not supported; expected integers or real floats (not complex, RGB or structured)")
    check_budget(full_shape, dtype, limits, what=f"{role} {name}")
    n_bytes = math.prod(full_shape) * dtype.itemsize
    if offset == 0:  # as nibabel does: an unset offset in a single file means "right after the header and extension flag"
        offset = size + 4
    if offset < size or offset - size > limits.max_bytes:
        raise CorruptImageError(f"{role} {name}: cannot be read (vox_offset {offset} outside [{size}, {size + limits.max_bytes}])")
    shape = full_shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        kind = "4-D or higher" if len(shape) > 3 else f"{len(shape)}-D"
        raise ImageDataError(f"{role} {name}: expected a 3-D volume; header declares {kind} shape {full_shape}")
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    if sform == 0 and qform == 0:
        raise ImageDataError(
            f"{role} {name}: no world geometry (sform_code=0 and qform_code=0); the voxel-to-world mapping is unknown, "
            "so the file cannot be matched to its image or resampled; rewrite it with its scanner geometry"
        )
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - nibabel raises for NaN quaternions and similar
        raise ImageDataError(f"{role} {name}: affine cannot be computed from the header ({type(exc).__name__}: {exc})") from exc
    source = "sform (srow_x/y/z)" if sform > 0 else "qform (quatern_b/c/d, qoffset, pixdim)"
    if not np.all(np.isfinite(affine)):
        raise ImageDataError(f"{role} {name}: affine from the {source} holds NaN or Inf: {affine[:3].tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageDataError(f"{role} {name}: affine from the {source} is singular (a zero voxel size or collinear axes): {affine[:3].tolist()}")
    return NiftiHeader(name, header, shape, dtype, affine, offset, n_bytes)  # type: ignore[arg-type]


def _max_file_bytes(limits: ReadLimits) -> int:
    """A file cannot be much larger than the voxel data it may declare (header and extensions: 1 MiB)."""
    return limits.max_bytes + 2**20


def _too_large(role: str, label: str, size: int, limits: ReadLimits) -> ImageTooLargeError:
    return ImageTooLargeError(f"{role} {label}: file is {size / 2**20:.1f} MiB; limits.max_memory_mb is {limits.max_memory_mb:g}")


def _source_bytes(source: str | Path | bytes, name: str | None, role: str, limits: ReadLimits) -> tuple[BinaryIO, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source), name or "<bytes>"
    path = Path(source)
    label = name or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} {label}: no such file")
    size = path.stat().st_size
    if size > _max_file_bytes(limits):
        raise _too_large(role, label, size, limits)
    return open(path, "rb"), label  # noqa: SIM115 - closed by the caller


def read_file_bytes(path: str | Path, *, role: str = "image", limits: ReadLimits | None = None, name: str | None = None) -> bytes:
    """The stored (still compressed) content of a file, read in one open and refused when over the budget.

    For a stage that hashes a file and decodes it (cache keys): hash these bytes, then give them to
    :func:`read_header`, :func:`load_nifti` or :func:`load_label_array` with ``name=str(path)``, so the file
    is opened once and the messages still name it. Nothing is decompressed here.

    Parameters
    ----------
    path : path
        The file.
    role, limits, name
        As :func:`read_header`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ImageTooLargeError
        The file is larger than ``limits.max_memory_mb`` plus 1 MiB (checked before and while reading).

    Examples
    --------
    >>> import numpy as np, nibabel as nib, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "lab.nii.gz"
    >>> nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), path)
    >>> content = read_file_bytes(path, role="label")
    >>> load_label_array(content, name=str(path)).shape
    (2, 2, 2)
    """
    limits = limits or ReadLimits()
    raw, label = _source_bytes(Path(path), name, role, limits)
    cap = _max_file_bytes(limits)
    with raw:
        content = raw.read(cap + 1)  # the file may have grown since it was measured
    if len(content) > cap:
        raise _too_large(role, label, len(content), limits)
    return content


def read_header(source: str | Path | bytes, *, role: str = "image", limits: ReadLimits | None = None, name: str | None = None) -> NiftiHeader:
    """Parse and check a NIfTI header, reading (and decompressing) only its first 540 bytes.

    Parameters
    ----------
    source : path or bytes
        A ``.nii`` or ``.nii.gz`` file, or its content.
    role : str
        ``image``, ``label``, ``prediction``: named in error messages.
    limits : ReadLimits, optional
        The budget (default :class:`ReadLimits`).
    name : str, optional
        File name for messages when ``source`` is bytes.

    Raises
    ------
    FileNotFoundError, CorruptImageError, ImageTooLargeError, ImageDataError
    """
    limits = limits or ReadLimits()
    raw, label = _source_bytes(source, name, role, limits)
    with raw:
        return _parse_header(_read(_stream(raw), 540, label, role), label, role, limits)


def load_nifti(source: str | Path | bytes, *, role: str = "image", limits: ReadLimits | None = None, name: str | None = None) -> NiftiData:
    """Read a NIfTI file under the budget: header checks first, then a capped stream decompression.

    The voxel array is ``np.asanyarray(img.dataobj)``: the stored type when the header has no scaling,
    floats after ``scl_slope``/``scl_inter`` scaling. It is 3-D (trailing singleton axes dropped) and finite.

    Parameters
    ----------
    source, role, limits, name
        As :func:`read_header`.

    Raises
    ------
    FileNotFoundError
        No such file.
    CorruptImageError
        Truncated or unreadable file, or a file holding more data than its header declares.
    ImageTooLargeError
        Over ``limits``.
    ImageDataError
        No sform/qform, a NaN or singular affine, a shape that is not 3-D, NaN or Inf voxels.

    Examples
    --------
    >>> import numpy as np, nibabel as nib
    >>> img = nib.Nifti1Image(np.ones((2, 3, 4), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
    >>> data = load_nifti(img.to_bytes(), name="ones.nii")
    >>> data.array.shape, data.spacing
    ((2, 3, 4), (0.5, 0.5, 2.0))
    >>> load_nifti(img.to_bytes(), limits=ReadLimits(max_voxels=10), name="ones.nii")
    Traceback (most recent call last):
    ...
    audit.harmonize.limits.ImageTooLargeError: image ones.nii: header declares shape (2, 3, 4) = 24 voxels; limits.max_voxels is 10
    """
    limits = limits or ReadLimits()
    raw, label = _source_bytes(source, name, role, limits)
    with raw:
        stream = _stream(raw)
        head = _read(stream, 540, label, role)
        info = _parse_header(head, label, role, limits)
        content = _read_content(stream, head, info, label, role)
    try:
        slope, inter = info.header.get_slope_inter()
        n_voxels = math.prod(info.shape)
        array = np.frombuffer(content, dtype=info.dtype, count=n_voxels, offset=info.data_offset).reshape(info.shape, order="F")
        if not info.dtype.isnative:
            array = array.astype(info.dtype.newbyteorder("="))
        array = nib.volumeutils.apply_read_scaling(array, slope, inter)
    except Exception as exc:  # noqa: BLE001 - nibabel raises HeaderDataError for an infinite scale factor
        raise CorruptImageError(f"{role} {label}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ImageDataError(f"{role} {label}: {bad} of {array.size} voxels are NaN or Inf; voxel values must be finite")
    return NiftiData(info, array)


def _read_content(stream: BinaryIO, head: bytes, info: NiftiHeader, name: str, role: str) -> bytearray:
    """The whole decompressed file (header, extensions, voxels) into one buffer of the declared size, then one byte more."""
    total = info.data_offset + info.data_bytes
    buf = bytearray(total)
    got = min(len(head), total)
    buf[:got] = head[:got]
    view = memoryview(buf)
    try:
        while got < total:
            n = stream.readinto(view[got : min(total, got + _CHUNK)])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        extra = head[total:] or stream.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptImageError(f"{role} {name}: cannot be read ({type(exc).__name__}: {exc})") from exc
    finally:
        view.release()
    if got < total:
        raise CorruptImageError(f"{role} {name}: cannot be read (truncated: {got} bytes of the {total} its header declares)")
    if extra:
        raise CorruptImageError(
            f"{role} {name}: holds more data than its header declares ({total} bytes: offset {info.data_offset} + shape "
            f"{tuple(info.header.get_data_shape())} x {info.dtype.itemsize} bytes); refused (a wrong header or a compression bomb)"
        )
    return buf


def load_label_array(source: str | Path | bytes, *, role: str = "label", limits: ReadLimits | None = None, name: str | None = None) -> NiftiData:
    """:func:`load_nifti` for a label file: the array is returned as the smallest fitting integer type.

    A file stored as floats, or with a scale factor, is accepted only when every value is an integer
    (never ``get_fdata``: integer labels stay integers).

    Raises
    ------
    ImageDataError
        Non-integer values (``role`` and the count of offending voxels named), besides :func:`load_nifti`'s errors.

    Examples
    --------
    >>> import numpy as np, nibabel as nib
    >>> soft = nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4))
    >>> load_label_array(soft.to_bytes(), name="soft.nii")
    Traceback (most recent call last):
    ...
    audit.harmonize.loading.ImageDataError: label soft.nii: holds non-integer label values (8 voxels, e.g. 0.5; stored as float32); a label map holds integers
    """
    data = load_nifti(source, role=role, limits=limits, name=name)
    arr = data.array
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        # NIfTI (Fortran) order kept: a C-order copy of a 512 x 512 x 300 CT mask costs ~1 s, and the label code reads
        # either order (audit.metrics.case.find_objects_any_order); docs/performance.md, CT section
        return data
    fractional = arr != np.round(arr)
    if fractional.any():
        example = arr[fractional].flat[0]
        raise ImageDataError(
            f"{role} {data.header.name}: holds non-integer label values ({int(fractional.sum())} voxels, e.g. {example:g}; stored as "
            f"{arr.dtype}); a label map holds integers"
        )
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    dtype = np.result_type(np.min_scalar_type(int(lo)), np.min_scalar_type(int(hi)))
    logger.debug("%s %s stored as %s, converted to %s", role, data.header.name, arr.dtype, dtype)
    return dataclasses.replace(data, array=np.ascontiguousarray(arr.astype(dtype)))
