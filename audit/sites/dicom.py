"""``dicom``: one DICOM series per case folder, converted once to a cached NIfTI.

Layout: ``root/<images>/<local_id>/**/<files>`` (one folder per case, any depth). Reference masks: a NIfTI on
the series grid (``labels`` pattern), a DICOM SEG file (``labels`` pattern naming a SEG object), or
``labels: seg`` for the one SEG object inside the case folder (see :mod:`audit.sites.dicom_seg`). The series
(and a SEG) become RAS NIfTI files in a cache folder so later stages read NIfTI; the cache key hashes file
names, sizes and modification times (and the SEG options).

Geometry: slices are sorted along the normal ``row x col`` of ImageOrientationPatient by their
ImagePositionPatient; the voxel ``(i, j, k)`` is column ``i``, row ``j`` of slice ``k``, so the LPS affine
has columns ``row_cosine * column_spacing``, ``col_cosine * row_spacing``, ``(P_last - P_first) / (n - 1)``
and origin ``P_first``; RAS = diag(-1, -1, 1) applied to it. A gap larger than 1.5 times the median
slice step (a missing slice), uneven steps, differing orientation, spacing or matrix size fail the case.

Metadata tags: Manufacturer, ManufacturerModelName, MagneticFieldStrength, PatientAge, PatientSex,
EthnicGroup (a race, or an ethnicity when it reads as one). PatientID becomes the patient id only through
the keyed hash (``SPINE_AUDIT_PSEUDONYM_KEY``); without a key the case folder name is used. No other
identifying tag leaves this module.

Options (defaults in brackets)::

    images: "."                      # folder (relative to root) holding one sub-folder per case
    labels: "labels/{case_id}.nii.gz"  # a NIfTI or a DICOM SEG file; or "seg": the SEG inside the case folder
    seg_segments: null               # {SegmentLabel | CodeMeaning | CodeValue: label value}; default SegmentNumber
    seg_overlap: error               # error | last (voxels in two segments: the higher segment number wins)
    files: "*"                       # glob of DICOM files inside a case folder (searched recursively)
    cache_dir: null                  # default $SPINE_AUDIT_CACHE or ~/.cache/spine-audit, + /dicom/<site>
    series_description: null         # regex choosing a series when a folder holds several
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from audit.harmonize.geometry import LPS_TO_RAS
from audit.harmonize.limits import ReadLimits, check_budget
from audit.harmonize.metadata import normalize_ethnicity
from audit.harmonize.privacy import PSEUDONYM_KEY_ENV, pseudonymize
from audit.records import UNKNOWN, CaseFailure
from audit.sites.base import Adapter, PathOutsideRootError, RawCase, SiteDataError, missing_file_failure, register_adapter, site_path
from audit.sites.config import SiteConfig
from audit.sites.ct import ct_extra
from audit.sites.dicom_seg import SEG_OVERLAP, DicomSegError, is_dicom_seg, read_seg_on_grid

logger = logging.getLogger(__name__)

__all__ = ["DicomSeriesError", "series_geometry", "read_series", "iter_dicom"]



class DicomSeriesError(ValueError):
    """A DICOM series that cannot form one regular 3D volume (missing slices, mixed geometry)."""


def _headers(folder: Path, pattern: str, config: SiteConfig) -> list[tuple[Path, Any]]:
    out = []
    for path in sorted(p for p in folder.rglob(pattern) if p.is_file()):
        site_path(config, path.relative_to(config.root), what="DICOM file")  # a link out of the root fails the case
        try:
            out.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            logger.debug("skipping non-DICOM file %s: %s", path, exc)
    return out


def series_geometry(headers: list[Any]) -> tuple[np.ndarray, list[int]]:
    """Affine (RAS, 4x4) of a series and the slice order (indices into ``headers``).

    Raises
    ------
    DicomSeriesError
        For fewer than two slices, mixed orientation / pixel spacing / matrix size, duplicate positions,
        a missing slice (gap > 1.5 x median step) or uneven slice steps (> 1 % or 0.01 mm).
    """
    if len(headers) < 2:
        raise DicomSeriesError(f"series has {len(headers)} slice(s); at least 2 are needed for a 3D volume")
    try:
        iop = np.array([[float(x) for x in h.ImageOrientationPatient] for h in headers])
        ipp = np.array([[float(x) for x in h.ImagePositionPatient] for h in headers])
        spacing = np.array([[float(x) for x in h.PixelSpacing] for h in headers])
        matrix = {(int(h.Rows), int(h.Columns)) for h in headers}
    except AttributeError as exc:
        raise DicomSeriesError(f"slice header lacks a geometry tag: {exc}") from None
    if np.abs(iop - iop[0]).max() > 1e-4 or np.abs(spacing - spacing[0]).max() > 1e-4 or len(matrix) != 1:
        raise DicomSeriesError("slices differ in ImageOrientationPatient, PixelSpacing or Rows/Columns")
    row_cos, col_cos = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_cos, col_cos)
    order = list(np.argsort(ipp @ normal, kind="stable"))
    positions = ipp[order] @ normal
    steps = np.diff(positions)
    if np.any(steps < 1e-3):
        raise DicomSeriesError("two slices share one position (duplicate slices or several series mixed)")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * median)
    if gaps.size:
        k = int(gaps[0])
        raise DicomSeriesError(
            f"missing slice(s): gap of {steps[k]:.3g} mm after slice {k} of {len(headers)} (median step {median:.3g} mm)"
        )
    if np.abs(steps - median).max() > max(0.01, 0.01 * median):
        raise DicomSeriesError(f"uneven slice steps: {np.round(steps, 3).tolist()} mm")
    row_spacing, col_spacing = spacing[0]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = (ipp[order[-1]] - ipp[order[0]]) / (len(order) - 1)
    lps[:3, 3] = ipp[order[0]]
    return LPS_TO_RAS @ lps, [int(i) for i in order]


def _check_series_budget(headers: list[Any], folder: Path) -> None:
    """The voxel budget (:func:`audit.harmonize.limits.check_budget`, default limits) from Rows x Columns x slices.

    Checked before any pixel data is decoded, so a series declaring a huge matrix (or compressed frames that
    would inflate past the budget) fails the case instead of exhausting memory.
    """
    first = headers[0]
    frames = sum(int(getattr(h, "NumberOfFrames", 1) or 1) for h in headers)
    rescaled = float(getattr(first, "RescaleSlope", 1) or 1) != 1 or float(getattr(first, "RescaleIntercept", 0) or 0) != 0
    bits = int(getattr(first, "BitsAllocated", 16) or 16)
    dtype = np.dtype(np.float32) if rescaled else np.dtype(f"u{max(1, -(-bits // 8))}")
    check_budget((int(first.Columns), int(first.Rows), frames), dtype, ReadLimits(), what=f"DICOM series in {folder.name}")


def read_series(paths: list[Path]) -> nib.Nifti1Image:
    """Read a series' pixels into a RAS NIfTI image (see the module docstring for the geometry).

    Rescale slope/intercept are applied slice by slice (float32 output, Hounsfield units for CT) when any
    slice's are not 1/0.
    """
    from audit.harmonize.intensity import to_hounsfield

    datasets = [pydicom.dcmread(p) for p in paths]
    affine, order = series_geometry(datasets)
    slices = [datasets[i].pixel_array.T for i in order]  # (rows, cols) -> (i = col, j = row)
    rescale = [(float(getattr(datasets[i], "RescaleSlope", 1) or 1), float(getattr(datasets[i], "RescaleIntercept", 0) or 0)) for i in order]
    if any(r != (1.0, 0.0) for r in rescale):
        slices = [to_hounsfield(s, *r) for s, r in zip(slices, rescale)]
    volume = np.stack(slices, axis=-1)
    img = nib.Nifti1Image(volume, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _cache_dir(config: SiteConfig) -> Path:
    option = config.option("cache_dir")
    if option:
        path = Path(os.path.expandvars(str(option))).expanduser()
        return path if path.is_absolute() else config.root / path
    base = Path(os.environ.get("SPINE_AUDIT_CACHE", Path.home() / ".cache" / "spine-audit"))
    return base / "dicom" / config.name


def _metadata(header: Any) -> dict[str, Any]:
    ethnic = getattr(header, "EthnicGroup", None)
    as_ethnicity = ethnic is not None and normalize_ethnicity(ethnic, warnings=[]) != UNKNOWN
    return {
        "vendor": getattr(header, "Manufacturer", None),
        "scanner_model": getattr(header, "ManufacturerModelName", None),
        "field_strength": getattr(header, "MagneticFieldStrength", None),
        "age": getattr(header, "PatientAge", None),
        "sex": getattr(header, "PatientSex", None),
        "race": None if as_ethnicity else ethnic,
        "ethnicity": ethnic if as_ethnicity else None,
    }


def _patient_id(header: Any, local_id: str, site: str) -> str:
    raw = str(getattr(header, "PatientID", "") or "").strip()
    if raw and os.environ.get(PSEUDONYM_KEY_ENV):
        return pseudonymize(raw, namespace=site)
    return local_id


def _seg_options(config: SiteConfig) -> tuple[dict[str, int] | None, str]:
    segments = config.option("seg_segments")
    overlap = str(config.option("seg_overlap", "error"))
    if overlap not in SEG_OVERLAP:
        raise SiteDataError(f"sites[{config.name}].options.seg_overlap: allowed values are {list(SEG_OVERLAP)}; got {overlap!r}")
    if segments is None:
        return None, overlap
    if not isinstance(segments, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in segments.values()):
        raise SiteDataError(f"sites[{config.name}].options.seg_segments: expected {{segment label or code: positive label value}}; got {segments!r}")
    return {str(k): int(v) for k, v in segments.items()}, overlap


def _stats(paths: list[Path], base: Path) -> list[tuple[str, int, int]]:
    return sorted((p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def _save_atomic(img: nib.Nifti1Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.nii.gz")
    nib.save(img, tmp)
    tmp.replace(target)


def _seg_label(
    seg: Path, members: list[tuple[Path, Any]], *, cache: Path, local_id: str, image_key: str, options: tuple[dict[str, int] | None, str]
) -> Path:
    """Convert a SEG onto the series grid, cached beside the image (key: image, SEG file and SEG options)."""
    segments, overlap = options
    key = hashlib.sha256(repr((image_key, _stats([seg], seg.parent), sorted((segments or {}).items()), overlap)).encode()).hexdigest()[:12]
    target = cache / f"{local_id}-{key}-seg.nii.gz"
    if target.is_file():
        return target
    headers = [h for _, h in members]
    affine, _ = series_geometry(headers)
    shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    labels = read_seg_on_grid(seg, affine, shape, series_uid=str(getattr(headers[0], "SeriesInstanceUID", "")) or None, segment_values=segments, overlap=overlap)
    img = nib.Nifti1Image(labels, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    _save_atomic(img, target)
    return target


def iter_dicom(config: SiteConfig) -> Iterator[RawCase | CaseFailure]:
    """Yield one case per case folder, converting its series (and a SEG mask) to cached NIfTI (see the module docstring)."""
    try:
        images = site_path(config, str(config.option("images", ".")), what="images folder")
    except PathOutsideRootError as exc:
        raise SiteDataError(f"sites[{config.name}].options.images: {exc}") from None
    labels = str(config.option("labels", "labels/{case_id}.nii.gz"))
    seg_in_folder = labels.strip().lower() == "seg"
    pattern = str(config.option("files", "*"))
    choose = config.option("series_description")
    seg_options = _seg_options(config)
    if not images.is_dir():
        raise SiteDataError(f"sites[{config.name}].options.images: folder {images} not found")
    if not os.environ.get(PSEUDONYM_KEY_ENV):
        logger.warning("site %s: %s is not set; patient ids are the case folder names", config.name, PSEUDONYM_KEY_ENV)
    cache = _cache_dir(config)
    label_root = None if seg_in_folder else (config.root / labels).parent.resolve()
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and p.resolve() != label_root and not p.name.startswith(".")):
        local_id = folder.name
        case_id = f"{config.name}/{local_id}"
        try:
            site_path(config, folder.relative_to(config.root), what="case folder")
            label = None if seg_in_folder else site_path(config, labels.format(case_id=local_id), what="label")
            headers = _headers(folder, pattern, config)
            segs: list[Path] = []
            by_series: dict[str, list[tuple[Path, Any]]] = {}
            for path, header in headers:
                if is_dicom_seg(header):
                    segs.append(path)
                else:
                    by_series.setdefault(str(getattr(header, "SeriesInstanceUID", "")), []).append((path, header))
            if choose:
                by_series = {k: v for k, v in by_series.items() if re.search(str(choose), str(getattr(v[0][1], "SeriesDescription", "")))}
            if len(by_series) != 1:
                raise DicomSeriesError(f"folder {folder} holds {len(by_series)} matching DICOM series; expected 1 (set options.series_description)")
            members = next(iter(by_series.values()))
            series_geometry([h for _, h in members])  # cheap header-only validation (missing slices)
            _check_series_budget([h for _, h in members], folder)
            key = hashlib.sha256(repr(_stats([p for p, _ in members], folder)).encode()).hexdigest()[:12]
            image = cache / f"{local_id}-{key}.nii.gz"
            if not image.is_file():
                _save_atomic(read_series([p for p, _ in members]), image)
            if seg_in_folder:
                if len(segs) != 1:
                    raise DicomSegError(f"labels: seg expects one DICOM SEG object in {folder}; found {len(segs)}")
                label = _seg_label(segs[0], members, cache=cache, local_id=local_id, image_key=key, options=seg_options)
            elif label is not None and not label.name.endswith((".nii", ".nii.gz")) and label.is_file() and is_dicom_seg(label):
                label = _seg_label(label, members, cache=cache, local_id=local_id, image_key=key, options=seg_options)
        except (DicomSeriesError, DicomSegError, PathOutsideRootError, OSError, ValueError) as exc:
            yield CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            continue
        assert label is not None
        header = members[0][1]
        case = RawCase(
            local_id, image, label, patient_id=_patient_id(header, local_id, config.name), metadata=_metadata(header), extra=ct_extra(header)
        )
        yield case if label.is_file() else case.failed(missing_file_failure(case_id, config.name, "label", label))


register_adapter(
    Adapter(
        name="dicom",
        iter_cases=iter_dicom,
        options=frozenset({"images", "labels", "files", "cache_dir", "series_description", "seg_segments", "seg_overlap"}),
        default_label_map=None,
        description="One DICOM series per case folder (converted to cached NIfTI) plus NIfTI or DICOM SEG reference masks",
        path_options=frozenset({"images", "labels", "files"}),
    )
)
