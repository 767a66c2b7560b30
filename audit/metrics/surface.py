"""Surface extraction and surface-distance metrics on (cropped) boolean masks.

Definitions follow MONAI (``monai.metrics``, ``use_subvoxels=False``): the surface of a mask is the
mask minus its binary erosion by the cross-shaped (face-connected) structuring element, with
everything outside the array counted as background; distances run from each surface voxel of one
mask to the nearest surface voxel of the other, in mm, using the voxel spacing.

Why cropping is exact: every voxel outside the bounding box of reference ∪ prediction is
background in both masks, so (1) the erosion of a box that contains the mask, with border value 0,
equals the erosion of the whole image restricted to the box, and (2) the Euclidean distance
transform of "not surface" inside the box finds the nearest surface voxel exactly, because every
surface voxel (every zero of that field) lies inside the box. A margin of one voxel is kept anyway,
so that the eroded border is visible in the crop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = [
    "mask_surface",
    "directed_surface_distances",
    "SurfaceDistances",
    "hausdorff",
    "hausdorff_percentile",
    "average_symmetric_surface_distance",
    "normalized_surface_distance",
]


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Return the surface voxels of a boolean mask: ``mask XOR erosion(mask)`` (face connectivity, border 0)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


class SurfaceDistances:
    """Directed surface distances between two non-empty masks (in mm).

    Attributes
    ----------
    pred_to_ref : numpy.ndarray
        For each surface voxel of the prediction, the distance to the nearest reference surface voxel.
    ref_to_pred : numpy.ndarray
        For each surface voxel of the reference, the distance to the nearest prediction surface voxel.
    """

    __slots__ = ("pred_to_ref", "ref_to_pred")

    def __init__(self, pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> None:
        self.pred_to_ref = pred_to_ref
        self.ref_to_pred = ref_to_pred


def directed_surface_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
) -> SurfaceDistances:
    """Compute both directed surface-distance sets of two non-empty boolean masks of one grid.

    Parameters
    ----------
    reference, prediction : numpy.ndarray
        Boolean masks of the same shape (typically cropped to their joint bounding box plus a margin).
    spacing : sequence of float
        Voxel size in mm per array axis.

    Returns
    -------
    SurfaceDistances
    """
    surf_ref = mask_surface(reference)
    surf_pred = mask_surface(prediction)
    sampling = tuple(float(s) for s in spacing)
    dist_to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=sampling)
    dist_to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=sampling)
    return SurfaceDistances(pred_to_ref=dist_to_ref[surf_pred], ref_to_pred=dist_to_pred[surf_ref])


def hausdorff(d: SurfaceDistances) -> float:
    """Hausdorff distance: the maximum of both directed maxima (mm)."""
    return float(max(d.pred_to_ref.max(), d.ref_to_pred.max()))


def hausdorff_percentile(d: SurfaceDistances, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance: the larger of the two directed percentiles (linear interpolation).

    Same as ``monai.metrics.compute_hausdorff_distance(percentile=p, directed=False)``.
    """
    return float(max(np.percentile(d.pred_to_ref, percentile), np.percentile(d.ref_to_pred, percentile)))


def average_symmetric_surface_distance(d: SurfaceDistances) -> float:
    """ASSD: mean of all directed distances of both surfaces, pooled (MONAI ``symmetric=True``)."""
    n = d.pred_to_ref.size + d.ref_to_pred.size
    return float((d.pred_to_ref.sum() + d.ref_to_pred.sum()) / n)


def normalized_surface_distance(d: SurfaceDistances, tolerance_mm: float) -> float:
    """NSD (surface Dice) at a tolerance: surface voxels of both masks within the tolerance / all surface voxels.

    Distances are compared with the tolerance in single precision, as MONAI does, so that grid
    distances that equal the tolerance (one voxel at a tolerance of one voxel size) count as within.
    """
    tol = np.float32(tolerance_mm)
    within = np.count_nonzero(d.pred_to_ref.astype(np.float32) <= tol) + np.count_nonzero(
        d.ref_to_pred.astype(np.float32) <= tol
    )
    return float(within / (d.pred_to_ref.size + d.ref_to_pred.size))
