"""DICOM Segmentation objects (SEG, Segmentation Storage) as reference masks on an image series grid.

A SEG holds one binary (or fractional) frame per segment and plane; frames empty of a segment are usually
omitted. Each frame is placed on the image series' voxel grid by its ImagePositionPatient (per-frame
PlanePositionSequence) and must lie on that grid: same ImageOrientationPatient and PixelSpacing (shared or
per-frame functional groups), an in-plane offset and a slice index that are whole voxels. The result is an
integer label volume in the series' ``(i = column, j = row, k = slice)`` order, so it pairs with
:func:`audit.sites.dicom.read_series` voxel for voxel.

Label values: a segment's SegmentNumber, unless ``segment_values`` maps segments by SegmentLabel, by the
CodeMeaning or by the CodeValue of their SegmentedPropertyTypeCodeSequence (so SEGs that number the same
structures differently agree). Fractional frames count where the value is at least half of
MaximumFractionalValue. Voxels claimed by two segments are an error unless ``overlap="last"`` (the higher
segment number wins).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from audit.harmonize.geometry import LPS_TO_RAS

logger = logging.getLogger(__name__)

__all__ = ["SEG_SOP_CLASS_UID", "SEG_OVERLAP", "DicomSegError", "is_dicom_seg", "seg_segments", "read_seg_on_grid"]

#: Segmentation Storage SOP class.
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: Allowed values of ``overlap`` (site option ``seg_overlap``).
SEG_OVERLAP = ("error", "last")

_VOXEL_TOL = 0.05  # a frame must sit within this many voxels of a grid position
_DIRECTION_TOL = 1e-3
_SPACING_RTOL = 1e-3


class DicomSegError(ValueError):
    """A SEG that cannot become a label volume on the image grid (wrong series, off-grid frames, unknown segments)."""


def is_dicom_seg(header: Any) -> bool:
    """True for a dataset (or a path to one) of the Segmentation Storage SOP class."""
    if isinstance(header, (str, Path)):
        try:
            header = pydicom.dcmread(header, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            return False
    return str(getattr(header, "SOPClassUID", "")) == SEG_SOP_CLASS_UID or str(getattr(header, "Modality", "")) == "SEG"


def seg_segments(ds: Any) -> dict[int, dict[str, str]]:
    """SegmentNumber -> ``{label, code_value, code_meaning}`` from the SegmentSequence."""
    out: dict[int, dict[str, str]] = {}
    for item in getattr(ds, "SegmentSequence", []):
        code = item.SegmentedPropertyTypeCodeSequence[0] if "SegmentedPropertyTypeCodeSequence" in item else None
        out[int(item.SegmentNumber)] = {
            "label": str(getattr(item, "SegmentLabel", "")),
            "code_value": str(getattr(code, "CodeValue", "")) if code is not None else "",
            "code_meaning": str(getattr(code, "CodeMeaning", "")) if code is not None else "",
        }
    if not out:
        raise DicomSegError("SEG has no SegmentSequence")
    return out


def _segment_value(number: int, info: Mapping[str, str], segment_values: Mapping[str, int] | None) -> int:
    if segment_values is None:
        return number
    keys = {str(k).casefold(): int(v) for k, v in segment_values.items()}
    for candidate in (info["label"], info["code_meaning"], info["code_value"]):
        if candidate and candidate.casefold() in keys:
            return keys[candidate.casefold()]
    raise DicomSegError(
        f"segment {number} (label {info['label']!r}, type {info['code_meaning']!r} code {info['code_value']!r}) is not in "
        f"options.seg_segments; allowed keys: {sorted(segment_values)}"
    )


def _group_item(frame: Any, shared: Any, sequence: str) -> Any:
    for source in (frame, shared):
        if source is not None and sequence in source:
            return getattr(source, sequence)[0]
    raise DicomSegError(f"SEG frame lacks {sequence} in both per-frame and shared functional groups")


def _referenced_series(ds: Any) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in getattr(ds, "ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item}


def read_seg_on_grid(
    path: str | Path,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    series_uid: str | None = None,
    segment_values: Mapping[str, int] | None = None,
    overlap: str = "error",
) -> np.ndarray:
    """Read a SEG into an integer label volume on an image series' grid.

    Parameters
    ----------
    path : str or Path
        The SEG file.
    affine : numpy.ndarray
        RAS 4x4 affine of the image series (as from :func:`audit.sites.dicom.series_geometry`).
    shape : tuple of int
        ``(columns, rows, slices)`` of the image series.
    series_uid : str, optional
        The image's SeriesInstanceUID; when the SEG lists referenced series, it must be among them.
    segment_values : Mapping, optional
        SegmentLabel, CodeMeaning or CodeValue -> label value. Default: the SegmentNumber.
    overlap : {"error", "last"}
        Voxels in two segments: a :class:`DicomSegError`, or the higher segment number wins.

    Returns
    -------
    numpy.ndarray
        Label volume of ``shape`` (uint8, or uint16 for values above 255).

    Raises
    ------
    DicomSegError
        Not a SEG, a SEG of another series, a frame off the image grid or outside it, an unknown segment,
        or overlapping segments with ``overlap="error"``.
    """
    if overlap not in SEG_OVERLAP:
        raise ValueError(f"overlap: allowed values are {list(SEG_OVERLAP)}; got {overlap!r}")
    ds = pydicom.dcmread(path)
    if not is_dicom_seg(ds):
        raise DicomSegError(f"{Path(path).name} is not a DICOM Segmentation (SOPClassUID {getattr(ds, 'SOPClassUID', None)})")
    referenced = _referenced_series(ds)
    if series_uid and referenced and series_uid not in referenced:
        raise DicomSegError(f"SEG {Path(path).name} references series {sorted(referenced)}, not the case's image series {series_uid}")
    segments = seg_segments(ds)
    values = {n: _segment_value(n, info, segment_values) for n, info in segments.items()}
    if any(v <= 0 or v > 65535 for v in values.values()):
        raise DicomSegError(f"label values must be in 1..65535; got {values}")

    frames = np.asarray(ds.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    if str(getattr(ds, "SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        masks = frames >= 0.5 * float(getattr(ds, "MaximumFractionalValue", 255))
    else:
        masks = frames > 0
    per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != masks.shape[0]:
        raise DicomSegError(f"SEG has {masks.shape[0]} frames but {len(per_frame)} per-frame functional group items")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # moving one column (i) / one row (j)
    col_spacing, row_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    inverse = np.linalg.inv(lps)
    out = np.zeros(shape, dtype=np.uint16)
    owner = np.zeros(shape, dtype=np.int32)  # segment number that set each voxel (overlap checks)
    overlaps: dict[tuple[int, int], int] = {}
    for f, (mask, item) in enumerate(zip(masks, per_frame)):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if number not in values:
            raise DicomSegError(f"frame {f + 1} refers to segment {number}, which the SegmentSequence does not define")
        iop = np.array([float(x) for x in _group_item(item, shared, "PlaneOrientationSequence").ImageOrientationPatient])
        spacing = [float(x) for x in _group_item(item, shared, "PixelMeasuresSequence").PixelSpacing]
        position = np.array([float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient])
        if np.abs(iop[:3] - col_step / col_spacing).max() > _DIRECTION_TOL or np.abs(iop[3:] - row_step / row_spacing).max() > _DIRECTION_TOL:
            raise DicomSegError(f"frame {f + 1}: ImageOrientationPatient {iop.round(4).tolist()} differs from the image series'")
        if not np.allclose(spacing, [row_spacing, col_spacing], rtol=_SPACING_RTOL):
            raise DicomSegError(f"frame {f + 1}: PixelSpacing {spacing} differs from the image series' {[row_spacing, col_spacing]}")
        ijk = (inverse @ np.append(position, 1.0))[:3]
        index = np.rint(ijk).astype(int)
        if np.abs(ijk - index).max() > _VOXEL_TOL:
            raise DicomSegError(f"frame {f + 1}: ImagePositionPatient {position.round(3).tolist()} falls between voxels of the image grid (index {ijk.round(3).tolist()})")
        i0, j0, k = (int(v) for v in index)
        rows, cols = mask.shape
        if k < 0 or k >= shape[2] or i0 < 0 or j0 < 0 or i0 + cols > shape[0] or j0 + rows > shape[1]:
            raise DicomSegError(f"frame {f + 1}: a {rows}x{cols} frame at voxel ({i0}, {j0}, {k}) lies outside the image grid {tuple(shape)}")
        region = (slice(i0, i0 + cols), slice(j0, j0 + rows), k)
        plane = mask.T  # (rows, cols) -> (i = column, j = row)
        taken = owner[region]
        clash = plane & (taken != 0) & (taken != number)
        if clash.any():
            for other in np.unique(taken[clash]):
                key = (int(min(other, number)), int(max(other, number)))
                overlaps[key] = overlaps.get(key, 0) + int(np.count_nonzero(clash & (taken == other)))
            if overlap == "last":
                plane = plane & ((taken == 0) | (taken <= number))
        write = plane if overlap == "last" else plane & (taken == 0)
        out[region][write] = values[number]
        owner[region][write] = number
    if overlaps:
        described = ", ".join(f"segments {a} and {b}: {n} voxels" for (a, b), n in sorted(overlaps.items()))
        if overlap == "error":
            raise DicomSegError(f"overlapping segments ({described}); set options.seg_overlap: last to let the higher segment number win")
        logger.info("SEG %s: overlapping segments resolved by segment number (%s)", Path(path).name, described)
    return out.astype(np.uint8) if out.max(initial=0) <= 255 else out
