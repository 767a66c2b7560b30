"""Per-level detection and Dice: vertebra or disc levels.

Two modes:

* ``"instance"``: reference and prediction carry one label value per level (VerSe / TPTBox style,
  :data:`audit.ontology.LEVEL_VALUES`); a level is compared with the same label in the prediction.
* ``"components"``: CSpineSeg-style two-class labels (1 vertebral body, 2 disc, no level identity).
  Each class is split into 3D connected components, ordered along the superior-inferior axis, and
  reference components are matched one-to-one to predicted components by maximal Dice
  (Hungarian assignment). This is the 3D analogue of CSpineSeg's per-disc analysis, which took the
  2D components of the mid-sagittal slice and paired them by rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from audit.metrics.case import _expand, _union, label_boxes, validate_inputs
from audit.ontology import LEVEL_VALUES, coarse_of

logger = logging.getLogger(__name__)

__all__ = ["LEVEL_COLUMNS", "DETECTIONS", "compute_level_metrics"]

#: Columns of the level table: one row per case x level (reference level or spurious prediction).
LEVEL_COLUMNS: tuple[str, ...] = (
    "case_id",
    "structure",
    "level",
    "order",
    "detection",
    "dice",
    "reference_volume_ml",
    "predicted_volume_ml",
    "position_mm",
    "reference_label",
    "predicted_label",
)
DETECTIONS: tuple[str, ...] = ("detected", "missed", "false_positive")
CSPINESEG_CLASSES: Mapping[str, int] = {"vertebral_body": 1, "intervertebral_disc": 2}


def _coarse(name: str) -> str:
    try:
        return coarse_of(name)
    except (KeyError, ValueError):
        return "level"


def _detection(n_ref: int, n_pred: int, dice: float, min_dice: float) -> str:
    if n_ref and n_pred and dice > min_dice:
        return "detected"
    return "missed" if n_ref else "false_positive"


def _instance_rows(reference, prediction, sp, levels, min_dice, case_id, si_axis):
    if levels is None:
        max_value = max(LEVEL_VALUES.values())
        present = {
            i + 1
            for boxes in (label_boxes(reference, max_value), label_boxes(prediction, max_value))
            for i, b in enumerate(boxes)
            if b is not None
        }
        levels = {name: v for name, v in LEVEL_VALUES.items() if v in present}
    if not isinstance(levels, Mapping):
        raise ValueError(f"levels: expected a mapping level name -> label value; received {levels!r}")
    bad = {k: v for k, v in levels.items() if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1}
    if bad:
        raise ValueError(f"levels: label values must be integers >= 1; received {bad}")
    if not levels:
        return []
    max_label = max(int(v) for v in levels.values())
    ref_boxes, pred_boxes = label_boxes(reference, max_label), label_boxes(prediction, max_label)
    voxel_ml = math.prod(sp) / 1000.0
    rows, counters = [], {}
    for name, value in levels.items():
        box = _union([ref_boxes[value - 1], pred_boxes[value - 1]])
        if box is None:
            continue
        box = _expand(box, reference.shape, 1)
        r, p = reference[box] == value, prediction[box] == value
        n_ref, n_pred = int(np.count_nonzero(r)), int(np.count_nonzero(p))
        n_both = int(np.count_nonzero(r & p))
        dice = 2.0 * n_both / (n_ref + n_pred)
        structure = _coarse(name)
        counters[structure] = counters.get(structure, 0) + 1
        ref_or_pred = r if n_ref else p
        position = math.nan
        if si_axis is not None:
            idx = np.nonzero(ref_or_pred)[si_axis] + box[si_axis].start
            position = float(idx.mean() * sp[si_axis])
        rows.append(
            (case_id, structure, name, counters[structure], _detection(n_ref, n_pred, dice, min_dice), dice,
             n_ref * voxel_ml, n_pred * voxel_ml, position, value if n_ref else pd.NA, value if n_pred else pd.NA)
        )
    return rows


def _components(mask: np.ndarray, structure: np.ndarray, min_voxels: int) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(mask, structure=structure)
    if n and min_voxels > 1:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_voxels
        keep[0] = False
        remap = np.zeros(n + 1, dtype=lab.dtype)
        remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=lab.dtype)
        lab, n = remap[lab], int(keep.sum())
    return lab, n


def _ordered(lab: np.ndarray, n: int, si_axis: int, superior: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (rank of each component id 0..n, centroid index along si_axis, voxel counts); rank 0 = background."""
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    coord = np.indices(lab.shape, sparse=True)[si_axis]
    sums = np.bincount(lab.ravel(), weights=np.broadcast_to(coord, lab.shape).ravel(), minlength=n + 1)
    centroid = np.divide(sums, counts, out=np.zeros(n + 1), where=counts > 0)
    key = centroid[1:] if superior == "low" else -centroid[1:]
    order = np.argsort(key, kind="stable")
    rank = np.zeros(n + 1, dtype=np.int64)
    rank[order + 1] = np.arange(1, n + 1)
    return rank, centroid, counts


def _component_rows(reference, prediction, sp, classes, si_axis, superior, connectivity, min_voxels, min_dice,
                    level_names, case_id):
    structure_el = ndimage.generate_binary_structure(reference.ndim, connectivity)
    voxel_ml = math.prod(sp) / 1000.0
    max_label = max(classes.values())
    ref_boxes, pred_boxes = label_boxes(reference, max_label), label_boxes(prediction, max_label)
    rows = []
    for cls, value in classes.items():
        box = _union([ref_boxes[value - 1], pred_boxes[value - 1]])
        if box is None:
            continue
        box = _expand(box, reference.shape, 1)
        lab_r, n_r = _components(reference[box] == value, structure_el, min_voxels)
        lab_p, n_p = _components(prediction[box] == value, structure_el, min_voxels)
        rank_r, cen_r, cnt_r = _ordered(lab_r, n_r, si_axis, superior)
        rank_p, cen_p, cnt_p = _ordered(lab_p, n_p, si_axis, superior)
        overlap = np.bincount((lab_r.astype(np.int64) * (n_p + 1) + lab_p).ravel(), minlength=(n_r + 1) * (n_p + 1))
        overlap = overlap.reshape(n_r + 1, n_p + 1)[1:, 1:]
        dice = 2.0 * overlap / (cnt_r[1:, None] + cnt_p[None, 1:]) if n_r and n_p else np.zeros((n_r, n_p))
        match_of_ref: dict[int, int] = {}
        if n_r and n_p:
            ri, pj = linear_sum_assignment(-dice)
            match_of_ref = {int(i) + 1: int(j) + 1 for i, j in zip(ri, pj) if dice[i, j] > min_dice}
        names = list((level_names or {}).get(cls, ()))
        offset = box[si_axis].start
        for comp in np.argsort(rank_r[1:]) + 1:
            k = int(rank_r[comp])
            level = names[k - 1] if k <= len(names) else f"{cls}_{k}"
            j = match_of_ref.get(int(comp))
            d = float(dice[comp - 1, j - 1]) if j else 0.0
            rows.append((case_id, cls, level, k, "detected" if j else "missed", d, cnt_r[comp] * voxel_ml,
                         cnt_p[j] * voxel_ml if j else 0.0, (cen_r[comp] + offset) * sp[si_axis], k,
                         int(rank_p[j]) if j else pd.NA))
        matched = set(match_of_ref.values())
        for comp in np.argsort(rank_p[1:]) + 1:
            if int(comp) in matched:
                continue
            k = int(rank_p[comp])
            rows.append((case_id, cls, f"{cls}_fp{k}", k, "false_positive", 0.0, 0.0, cnt_p[comp] * voxel_ml,
                         (cen_p[comp] + offset) * sp[si_axis], pd.NA, k))
    return rows


def compute_level_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float],
    mode: str = "instance",
    levels: Mapping[str, int] | None = None,
    classes: Mapping[str, int] | None = None,
    si_axis: int | None = None,
    superior: str = "low",
    connectivity: int = 1,
    min_component_voxels: int = 1,
    min_dice: float = 0.0,
    level_names: Mapping[str, Sequence[str]] | None = None,
    case_id: str = "",
) -> pd.DataFrame:
    """Per-level detection (detected / missed / false_positive) and Dice of one case.

    Parameters
    ----------
    reference, prediction : numpy.ndarray
        Integer label arrays on the same grid.
    spacing : sequence of float
        Voxel size in mm per array axis.
    mode : {"instance", "components"}
        ``"instance"``: one label value per level. ``"components"``: levels from connected components
        of each class (CSpineSeg-style labels).
    levels : Mapping[str, int], optional
        Instance mode: level name -> label value. Default: :data:`audit.ontology.LEVEL_VALUES`
        restricted to the values present in either array.
    classes : Mapping[str, int], optional
        Components mode: coarse structure -> label value; default ``{"vertebral_body": 1,
        "intervertebral_disc": 2}`` (CSpineSeg).
    si_axis : int, optional
        Array axis running superior-inferior. Required in components mode (ordering); in instance mode
        it only fills ``position_mm``.
    superior : {"low", "high"}
        Whether low or high indices along ``si_axis`` are superior (``"low"`` for PIR/PSR/RPI... check
        the orientation: ``"low"`` when the axis code is ``I``).
    connectivity : int
        Components mode: 1 (faces) up to ``ndim`` (corners), as :func:`scipy.ndimage.generate_binary_structure`.
    min_component_voxels : int
        Components mode: components smaller than this are discarded in both arrays.
    min_dice : float
        A level counts as detected when its Dice is strictly greater than this (default: any overlap).
    level_names : Mapping[str, Sequence[str]], optional
        Components mode: names given in order (superior first) to the reference components of a class,
        e.g. ``{"intervertebral_disc": ("C2-C3", "C3-C4", ...)}``; otherwise ``"<class>_<k>"``.
    case_id : str
        Written into the ``case_id`` column.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LEVEL_COLUMNS`; one row per reference level (``detected`` or ``missed``) and per
        unmatched predicted level (``false_positive``; named ``"<class>_fp<k>"`` in components mode).
        ``order`` is the 1-based rank along the spine (components) or within the structure (instance);
        ``dice`` is 0 for missed and false-positive levels unless a same-label prediction overlaps below
        ``min_dice``.
    """
    sp = validate_inputs(reference, prediction, spacing)
    ndim = reference.ndim
    if si_axis is not None and (isinstance(si_axis, bool) or not isinstance(si_axis, (int, np.integer))
                                or not -ndim <= si_axis < ndim):
        raise ValueError(f"si_axis: expected an axis in [{-ndim}, {ndim - 1}]; received {si_axis!r}")
    si = None if si_axis is None else int(si_axis) % ndim
    if superior not in ("low", "high"):
        raise ValueError(f"superior: allowed values are 'low', 'high'; received {superior!r}")
    if not (isinstance(min_dice, (int, float)) and 0.0 <= min_dice < 1.0):
        raise ValueError(f"min_dice: expected a number in [0, 1); received {min_dice!r}")
    if mode == "instance":
        rows = _instance_rows(reference, prediction, sp, levels, float(min_dice), case_id, si)
    elif mode == "components":
        if si is None:
            raise ValueError("si_axis: required with mode='components' (components are ordered along it); received None")
        if connectivity not in range(1, ndim + 1):
            raise ValueError(f"connectivity: allowed values are 1..{ndim}; received {connectivity!r}")
        if isinstance(min_component_voxels, bool) or not isinstance(min_component_voxels, int) or min_component_voxels < 1:
            raise ValueError(f"min_component_voxels: expected an integer >= 1; received {min_component_voxels!r}")
        cls = dict(CSPINESEG_CLASSES if classes is None else classes)
        if not cls or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in cls.values()):
            raise ValueError(f"classes: expected a non-empty mapping structure -> label value >= 1; received {classes!r}")
        rows = _component_rows(reference, prediction, sp, cls, si, superior, connectivity, min_component_voxels,
                               float(min_dice), level_names, case_id)
    else:
        raise ValueError(f"mode: allowed values are 'instance', 'components'; received {mode!r}")
    table = pd.DataFrame.from_records(rows, columns=list(LEVEL_COLUMNS))
    return table.astype(
        {"order": "int64", "dice": "float64", "reference_volume_ml": "float64", "predicted_volume_ml": "float64",
         "position_mm": "float64", "reference_label": "Int64", "predicted_label": "Int64"}
    )
