"""Per-case checks that need to open the files: readability, image/label geometry, label values.

The manifest builder only checks what is cheap (files exist, metadata row present, ids unique, ages
parse). The pipeline calls :func:`check_case` for each case before inference, and
``spine-audit sites check`` runs the same function, so both report the same
:class:`~audit.records.CaseFailure` (stage ``"harmonize"``).

Files are opened through the guarded reader (:mod:`audit.harmonize.loading`): a header over the protocol's
``limits``, a missing sform/qform, a NaN affine, 2-D or 4-D data, NaN/Inf voxels or non-integer labels are
per-case failures before anything is scored; an empty reference is one too (:class:`EmptyReferenceError`).

Tolerances (also in ``docs/sites.md``): voxel spacing and origin must agree within ``atol_mm``
(default 0.01 mm, well above float32 header rounding, far below any real misregistration); direction
cosines within ``atol_direction`` (default 1e-3, about 0.06 degrees).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from audit.harmonize.intensity import hounsfield_warnings
from audit.harmonize.labels import label_value_counts, resolve_label_map, unknown_labels_error
from audit.harmonize.limits import ImageTooLargeError, ReadLimits
from audit.harmonize.loading import CorruptImageError, ImageDataError, NiftiData, NiftiHeader, load_label_array, load_nifti, read_header
from audit.ontology import LabelMap
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ATOL_MM",
    "DEFAULT_ATOL_DIRECTION",
    "CorruptImageError",
    "ImageDataError",
    "ImageTooLargeError",
    "EmptyReferenceError",
    "GeometryMismatchError",
    "load_image_checked",
    "geometry_problems",
    "check_geometry",
    "CaseCheck",
    "check_case",
]

DEFAULT_ATOL_MM = 0.01
DEFAULT_ATOL_DIRECTION = 1e-3


class GeometryMismatchError(ValueError):
    """Image and label do not share a voxel grid."""


class EmptyReferenceError(ValueError):
    """A reference segmentation with no voxel of any structure its label map names: nothing to score."""


def load_image_checked(
    path: str | Path, *, role: str = "image", load_data: bool = True, limits: ReadLimits | None = None
) -> tuple[NiftiData | NiftiHeader, np.ndarray | None]:
    """Open a NIfTI file through the guarded reader (:mod:`audit.harmonize.loading`).

    Returns
    -------
    img : NiftiData or NiftiHeader
        Has ``.shape`` (3-D) and ``.affine``; a header only when ``load_data`` is False.
    data : numpy.ndarray or None
        The voxel array (integers for ``role='label'``; ``None`` when ``load_data`` is False).

    Raises
    ------
    FileNotFoundError, CorruptImageError, ImageTooLargeError, ImageDataError
        Missing, unreadable or truncated file; over the ``limits`` budget; no sform/qform, NaN affine, not 3-D,
        NaN/Inf voxels, or (labels) non-integer values. The message names the role, path and cause.
    """
    if not load_data:
        return read_header(path, role=role, limits=limits), None
    data = load_label_array(path, role=role, limits=limits) if role == "label" else load_nifti(path, role=role, limits=limits)
    return data, data.array


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=float)) + ")"


def geometry_problems(
    image_shape: tuple[int, ...],
    image_affine: np.ndarray,
    label_shape: tuple[int, ...],
    label_affine: np.ndarray,
    *,
    atol_mm: float = DEFAULT_ATOL_MM,
    atol_direction: float = DEFAULT_ATOL_DIRECTION,
) -> list[str]:
    """Compare two voxel grids; return one message per disagreement (empty when they match).

    Shape (spatial dims; trailing singleton dims ignored), voxel spacing (affine column norms, mm),
    origin (affine translation, mm) and direction cosines are checked separately so that the message
    says which one differs and by how much.
    """
    if atol_mm < 0 or atol_direction < 0:
        raise ValueError(f"geometry tolerances must be >= 0; got atol_mm={atol_mm!r}, atol_direction={atol_direction!r}")
    problems: list[str] = []
    ishape, lshape = _spatial_shape(image_shape), _spatial_shape(label_shape)
    if ishape != lshape:
        problems.append(f"shape: image {ishape} vs label {lshape}")
    ia, la = np.asarray(image_affine, dtype=float), np.asarray(label_affine, dtype=float)
    ispacing, lspacing = np.linalg.norm(ia[:3, :3], axis=0), np.linalg.norm(la[:3, :3], axis=0)
    d_spacing = float(np.max(np.abs(ispacing - lspacing)))
    if d_spacing > atol_mm:
        problems.append(f"spacing: image {_fmt(ispacing)} mm vs label {_fmt(lspacing)} mm (max difference {d_spacing:.4g} mm > atol_mm={atol_mm})")
    d_origin = float(np.max(np.abs(ia[:3, 3] - la[:3, 3])))
    if d_origin > atol_mm:
        problems.append(f"origin: image {_fmt(ia[:3, 3])} mm vs label {_fmt(la[:3, 3])} mm (max difference {d_origin:.4g} mm > atol_mm={atol_mm})")
    with np.errstate(divide="ignore", invalid="ignore"):
        idir, ldir = ia[:3, :3] / ispacing, la[:3, :3] / lspacing
    d_dir = float(np.nanmax(np.abs(idir - ldir)))
    if not np.isfinite(idir).all() or not np.isfinite(ldir).all():
        problems.append("direction: an affine has a zero-length axis")
    elif d_dir > atol_direction:
        ic, lc = "".join(nib.aff2axcodes(ia)), "".join(nib.aff2axcodes(la))
        problems.append(
            f"direction: image {ic} vs label {lc} (max cosine difference {d_dir:.4g} > atol_direction={atol_direction})"
        )
    return problems


def check_geometry(
    image_img: Any,
    label_img: Any,
    *,
    atol_mm: float = DEFAULT_ATOL_MM,
    atol_direction: float = DEFAULT_ATOL_DIRECTION,
) -> None:
    """Raise :class:`GeometryMismatchError` unless image and label share a voxel grid.

    Parameters
    ----------
    image_img, label_img
        Objects with ``.shape`` and ``.affine`` (nibabel images).
    atol_mm : float
        Tolerance on spacing and origin, in mm.
    atol_direction : float
        Tolerance on direction cosines.
    """
    problems = geometry_problems(image_img.shape, image_img.affine, label_img.shape, label_img.affine, atol_mm=atol_mm, atol_direction=atol_direction)
    if problems:
        raise GeometryMismatchError("image/label geometry mismatch: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class CaseCheck:
    """Result of :func:`check_case`.

    Attributes
    ----------
    case_id : str
    failures : tuple of CaseFailure
        Empty when the case passed every check.
    label_values : Mapping[int, int]
        Voxel count of each label value found (empty when the label could not be read).
    unknown_values : tuple of int
        Label values outside the label map.
    shape, spacing_mm, axcodes
        Geometry of the image (``None`` when it could not be read).
    warnings : tuple of str
        Problems that do not stop the case (e.g. an image that does not look like Hounsfield units for a model that
        expects them); recorded per case, shown in the report's data-quality section.
    """

    case_id: str
    failures: tuple[CaseFailure, ...] = ()
    label_values: Mapping[int, int] = dataclasses.field(default_factory=dict)
    unknown_values: tuple[int, ...] = ()
    shape: tuple[int, ...] | None = None
    spacing_mm: tuple[float, ...] | None = None
    axcodes: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures


def check_case(
    case_id: str,
    image_path: str | Path,
    label_path: str | Path,
    label_map: str | Mapping[Any, Any] | LabelMap,
    *,
    site: str,
    stage: str = "harmonize",
    atol_mm: float = DEFAULT_ATOL_MM,
    atol_direction: float = DEFAULT_ATOL_DIRECTION,
    limits: ReadLimits | None = None,
    expect_hounsfield: bool = False,
) -> CaseCheck:
    """Run the voxel-level checks of one case; each problem becomes a :class:`CaseFailure`.

    With ``expect_hounsfield`` (the model maps fixed HU ranges, :data:`audit.harmonize.intensity.HOUNSFIELD_METHODS`)
    the image is also checked by :func:`~audit.harmonize.intensity.hounsfield_warnings`; what it finds is a warning of
    the case (``CaseCheck.warnings``), not a failure (a crop of bone alone has no air).

    Checks, in order: the image and the label read completely under the ``limits`` budget and are usable
    (:func:`~audit.harmonize.loading.load_nifti`: sform or qform present, finite non-singular affine, 3-D,
    finite voxels; the label holds integers), their grids agree (:func:`geometry_problems`), every label
    value is mapped or ignored by ``label_map``, and the reference is not empty (at least one voxel of a
    structure the label map names). A case failing any check is never scored against the model.
    """
    lmap = resolve_label_map(label_map)
    failures: list[CaseFailure] = []
    warnings: tuple[str, ...] = ()
    image = label = label_data = None
    for role, path in (("image", image_path), ("label", label_path)):
        try:
            data, array = load_image_checked(path, role=role, limits=limits)
        except (FileNotFoundError, CorruptImageError, ImageTooLargeError, ImageDataError) as exc:
            failures.append(CaseFailure.from_exception(case_id, stage, exc, site=site))
            continue
        except Exception as exc:  # noqa: BLE001 - whatever else a hostile file triggers is this case's failure, not the run's
            logger.warning("%s %s of case %s: unexpected %s: %s", role, path, case_id, type(exc).__name__, exc)
            failures.append(CaseFailure.from_exception(case_id, stage, exc, site=site))
            continue
        if role == "image":
            image = data
            if expect_hounsfield:
                warnings = tuple(hounsfield_warnings(array))
        else:
            label, label_data = data, array
    shape = spacing = axcodes = None
    if image is not None:
        shape = _spatial_shape(image.shape)
        spacing = tuple(float(z) for z in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
        axcodes = "".join(str(c) for c in nib.aff2axcodes(image.affine))
    if image is not None and label is not None:
        try:
            check_geometry(image, label, atol_mm=atol_mm, atol_direction=atol_direction)
        except GeometryMismatchError as exc:
            failures.append(CaseFailure.from_exception(case_id, stage, exc, site=site))
    counts: dict[int, int] = {}
    unknown: tuple[int, ...] = ()
    if label_data is not None:
        counts = label_value_counts(label_data)
        known = set(lmap.values) | set(lmap.ignore) | {0}
        unknown = tuple(v for v in counts if v not in known)
        if unknown:
            exc = unknown_labels_error(unknown, lmap, unknown_voxels=sum(counts[v] for v in unknown))
            failures.append(CaseFailure.from_exception(case_id, stage, exc, site=site))
        if not unknown and not any(counts.get(v, 0) for v in lmap.values):  # unknown values: the map, not the reference, is the problem
            seen = sorted(counts)
            exc = EmptyReferenceError(
                f"label {label_path}: reference segmentation is empty: no voxel holds a value that label map {lmap.name!r} maps to a "
                f"structure (mapped values {sorted(lmap.values)}; values found {seen}); an empty reference cannot score a model"
            )
            failures.append(CaseFailure.from_exception(case_id, stage, exc, site=site))
    return CaseCheck(case_id, tuple(failures), counts, unknown, shape, spacing, axcodes, warnings)
