"""Gallery of the worst cases per group: the mid-sagittal slice with reference and prediction contours.

Drawn with numpy (no matplotlib figure per case, so a gallery of a dozen cases costs milliseconds): the
grey-scale slice is scaled to a fixed display height, each structure's boundary is painted in its
Okabe-Ito colour, the reference as a solid line and the prediction as a dashed line (so the two read
apart without colour), and the result is encoded as a PNG data URI.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from audit.harmonize.limits import ReadLimits
from audit.harmonize.loading import load_nifti
from audit.ontology import LabelMap, remap_labels
from audit.records import EVALUABLE_STATUSES
from audit.report.figures import OKABE_ITO

logger = logging.getLogger(__name__)

__all__ = ["DISPLAY_HEIGHT", "case_figure", "contour_overlay", "mid_sagittal", "worst_cases"]

#: Height in pixels of a gallery image.
DISPLAY_HEIGHT = 220


def worst_cases(cases: pd.DataFrame, *, axis: str, metric: str, higher_is_better: bool, per_group: int) -> pd.DataFrame:
    """The ``per_group`` worst cases of each group, ranked by the case's mean ``metric`` over structures.

    Returns
    -------
    pandas.DataFrame
        Columns ``case_id, <axis>, value`` (value = mean over the case's estimable structures), worst first
        within each group.
    """
    sub = cases[(cases["metric"] == metric) & cases["status"].isin(EVALUABLE_STATUSES) & np.isfinite(cases["value"])]
    per_case = sub.groupby(["case_id", axis], as_index=False)["value"].mean()
    per_case = per_case.sort_values(["value", "case_id"], ascending=[higher_is_better, True], kind="stable")
    return per_case.groupby(axis, sort=True).head(per_group).sort_values([axis, "value"], ascending=[True, higher_is_better], kind="stable")


def mid_sagittal(img: nib.Nifti1Image) -> tuple[np.ndarray, float]:
    """The middle left-right slice in RAS orientation with superior up, and its row/column pixel aspect.

    Returns
    -------
    slice : numpy.ndarray
        2-D array, rows from superior to inferior, columns from posterior to anterior.
    aspect : float
        Physical height / width of one pixel (``zooms[S] / zooms[A]``).
    """
    canonical = nib.as_closest_canonical(img)
    data = np.asanyarray(canonical.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    zooms = canonical.header.get_zooms()[:3]
    sl = data[data.shape[0] // 2]  # (A, S)
    aspect = float(zooms[2] / zooms[1]) if zooms[1] else 1.0
    return np.ascontiguousarray(np.rot90(sl)), aspect


def _upsample(array: np.ndarray, aspect: float) -> np.ndarray:
    """Nearest-neighbour resize to DISPLAY_HEIGHT rows keeping the physical aspect ratio."""
    rows, cols = array.shape
    height = DISPLAY_HEIGHT
    width = max(1, round(cols * height / max(rows * aspect, 1e-6)))
    ri = np.minimum((np.arange(height) * rows / height).astype(int), rows - 1)
    ci = np.minimum((np.arange(width) * cols / width).astype(int), cols - 1)
    return array[np.ix_(ri, ci)]


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def contour_overlay(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, label_values: Mapping[str, int], aspect: float = 1.0) -> np.ndarray:
    """RGB uint8 image: the grey slice with reference boundaries solid and prediction boundaries dashed.

    Parameters
    ----------
    image, reference, prediction : numpy.ndarray
        2-D slices of the same shape (labels in canonical values).
    label_values : mapping of str to int
        Structure name -> label value; the i-th structure gets the i-th Okabe-Ito colour.
    aspect : float
        Pixel height / width.
    """
    if not (image.shape == reference.shape == prediction.shape):
        raise ValueError(f"image, reference, prediction: shapes must match; found {image.shape}, {reference.shape}, {prediction.shape}")
    img = _upsample(image.astype(np.float32), aspect)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat((grey * 200)[..., None], 3, axis=2)  # keep the slice darker than the contours
    ref, pred = _upsample(reference, aspect), _upsample(prediction, aspect)
    rr, cc = np.indices(ref.shape)
    dashes = ((rr + cc) // 4) % 2 == 0
    for i, value in enumerate(label_values.values()):
        colour = np.array([int(OKABE_ITO[i % len(OKABE_ITO)][k : k + 2], 16) for k in (1, 3, 5)], dtype=float)
        ref_edge = ndimage.binary_dilation(_boundary(ref == value))  # 3 px wide: solid
        pred_edge = _boundary(pred == value) & dashes  # 1 px, dashed
        rgb[ref_edge] = colour
        rgb[pred_edge] = 255.0 - 0.35 * (255.0 - colour)  # lighter tint of the same hue
        rgb[pred_edge & ref_edge] = 255.0
    return rgb.astype(np.uint8)


def _canonical(labels: np.ndarray, label_map: LabelMap | None) -> np.ndarray:
    labels = np.rint(labels).astype(np.int64)
    return labels if label_map is None else remap_labels(labels, label_map).array.astype(np.int64)


def case_figure(
    row: Mapping[str, object],
    *,
    label_values: Mapping[str, int],
    reference_map: LabelMap | None = None,
    prediction_map: LabelMap | None = None,
    limits: ReadLimits | None = None,
) -> str | None:
    """PNG data URI of one case's mid-sagittal slice with contours; None when its files cannot be read.

    ``row`` holds absolute ``image_path``, ``label_path`` and ``prediction_path`` (as
    :meth:`audit.runfolder.RunFolder.read_manifest` returns them). ``reference_map`` (the site's) and
    ``prediction_map`` (the model's) translate the files' label values to
    canonical coarse values (``label_values``); ``None`` means the file already holds canonical values.
    Files are read through the guarded reader with the run's ``limits``.
    """
    try:
        image, aspect = mid_sagittal(load_nifti(str(row["image_path"]), role="image", limits=limits).image)
        reference, _ = mid_sagittal(load_nifti(str(row["label_path"]), role="label", limits=limits).image)
        prediction, _ = mid_sagittal(load_nifti(str(row["prediction_path"]), role="prediction", limits=limits).image)
        reference, prediction = _canonical(reference, reference_map), _canonical(prediction, prediction_map)
        rgb = contour_overlay(image, reference, prediction, label_values, aspect)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable file must not stop the report
        logger.warning("gallery: case %s not drawn: %s", row.get("case_id"), exc)
        return None
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, rgb, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
