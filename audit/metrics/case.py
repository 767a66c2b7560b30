"""Per-case, per-structure metrics: the long metric table of DESIGN.md.

Speed: one :func:`scipy.ndimage.find_objects` pass per label array (on the array's foreground bounding
box), then every computation runs on the bounding box of reference ∪ prediction of one structure, plus a
one-voxel margin (see :mod:`audit.metrics.surface` for why this is exact).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from audit.metrics import overlap, surface
from audit.metrics.registry import EmptyPolicy, MetricSpec, metric_spec, nsd_tolerance
from audit.records import METRIC_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["compute_case_metrics", "structure_values", "label_boxes", "find_objects_any_order", "validate_inputs"]

Box = tuple[slice, ...]
_DISTANCE_METRICS = frozenset({"hd", "hd95", "assd"})
_MARGIN = 1


def validate_inputs(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> tuple[float, ...]:
    """Shared validator: same shape, integer or boolean label arrays, one positive spacing per axis.

    Returns
    -------
    tuple of float
        The spacing as floats.
    """
    for name, arr in (("reference", reference), ("prediction", prediction)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name}: expected a numpy.ndarray of integer labels; received {type(arr).__name__}")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(
                f"{name}: expected an integer or boolean label array; received dtype {arr.dtype} "
                "(load labels without float conversion, e.g. audit.metrics.load_labels)"
            )
        if arr.ndim not in (2, 3):
            raise ValueError(f"{name}: expected a 2D or 3D array; received shape {arr.shape}")
    if reference.shape != prediction.shape:
        raise ValueError(
            f"prediction: shape {prediction.shape} differs from reference shape {reference.shape}; "
            "resample the prediction to the reference grid first"
        )
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise ValueError(f"spacing: expected a sequence of {reference.ndim} floats in mm; received {spacing!r}") from exc
    if len(sp) != reference.ndim:
        raise ValueError(
            f"spacing: expected {reference.ndim} values (one per array axis); received {len(sp)}: {spacing!r}"
        )
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing: every value must be finite and > 0 mm; received {spacing!r}")
    return sp


def find_objects_any_order(arr: np.ndarray, max_label: int) -> list[Box | None]:
    """:func:`scipy.ndimage.find_objects` that scans a Fortran-ordered array (NIfTI data) through its transposed,
    C-ordered view: the same boxes, about 10 times faster on a 512 x 512 x 300 CT mask."""
    if arr.ndim > 1 and arr.strides[0] < arr.strides[-1]:
        return [None if b is None else b[::-1] for b in ndimage.find_objects(arr.T, max_label=max_label)]
    return ndimage.find_objects(arr, max_label=max_label)


def label_boxes(labels: np.ndarray, max_label: int) -> list[Box | None]:
    """Bounding boxes of labels 1..max_label in one :func:`scipy.ndimage.find_objects` pass.

    The pass runs on the array's foreground bounding box only; boxes are returned in full-array
    coordinates, ``None`` for absent labels.
    """
    arr = labels.view(np.uint8) if labels.dtype == np.bool_ else labels
    fg = arr != 0
    if arr.ndim == 3:
        proj01 = fg.any(axis=2)
        extents = [proj01.any(axis=1), proj01.any(axis=0), fg.any(axis=(0, 1))]
    else:
        extents = [fg.any(axis=1), fg.any(axis=0)]
    if not extents[0].any():
        return [None] * max_label
    offsets = []
    crop = []
    for ext in extents:
        idx = np.flatnonzero(ext)
        offsets.append(int(idx[0]))
        crop.append(slice(int(idx[0]), int(idx[-1]) + 1))
    sub = arr[tuple(crop)]
    if np.issubdtype(sub.dtype, np.signedinteger) and sub.min() < 0:
        raise ValueError(f"labels: negative label values are not allowed; found minimum {int(sub.min())}")
    found = find_objects_any_order(sub, max_label)
    return [
        None if b is None else tuple(slice(s.start + o, s.stop + o) for s, o in zip(b, offsets)) for b in found
    ]


def _union(boxes: Sequence[Box | None]) -> Box | None:
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    ndim = len(present[0])
    return tuple(
        slice(min(b[a].start for b in present), max(b[a].stop for b in present)) for a in range(ndim)
    )


def _expand(box: Box, shape: Sequence[int], margin: int) -> Box:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _mask(crop: np.ndarray, values: Sequence[int]) -> np.ndarray:
    if crop.dtype == np.bool_:
        return crop.copy() if tuple(values) == (1,) else np.zeros(crop.shape, dtype=bool)
    if len(values) == 1:
        return crop == values[0]
    return np.isin(crop, values)


def structure_values(
    ref: np.ndarray,
    pred: np.ndarray,
    *,
    spacing: Sequence[float],
    specs: Sequence[MetricSpec],
    worst_distance: float,
    policy: EmptyPolicy,
    slice_axis: int,
    n_slices_total: int,
) -> tuple[str, dict[str, float], int, int]:
    """Compute the requested metrics of one structure from two boolean masks of one grid (a crop or not).

    Returns
    -------
    status : str
        ``ok``, ``missed``, ``false_positive`` or ``both_empty``.
    values : dict
        Metric name -> value, after the empty-mask policy.
    n_ref, n_pred : int
        Voxel counts.
    """
    n_ref = int(np.count_nonzero(ref))
    n_pred = int(np.count_nonzero(pred))
    if n_ref == 0 and n_pred == 0:
        return "both_empty", {s.name: math.nan for s in specs}, 0, 0
    status = "ok" if n_ref and n_pred else ("missed" if n_ref else "false_positive")
    voxel_ml = math.prod(spacing) / 1000.0
    v_ref, v_pred = n_ref * voxel_ml, n_pred * voxel_ml
    n_both = int(np.count_nonzero(ref & pred)) if status == "ok" else 0
    need_surface = status == "ok" and any(s.name in _DISTANCE_METRICS or s.name.startswith("nsd_") for s in specs)
    dist = surface.directed_surface_distances(ref, pred, spacing) if need_surface else None
    values: dict[str, float] = {}
    for spec in specs:
        name = spec.name
        if name == "dice":
            values[name] = overlap.dice(n_ref, n_pred, n_both)
        elif name == "iou":
            values[name] = overlap.iou(n_ref, n_pred, n_both)
        elif name == "rel_volume_error":
            values[name] = (v_pred - v_ref) / v_ref if n_ref else float(policy.false_positive_rel_volume_error)
        elif name == "abs_volume_error_ml":
            values[name] = abs(v_pred - v_ref)
        elif name == "dice_slicewise_cspineseg":
            values[name] = overlap.dice_slicewise_cspineseg(
                ref, pred, slice_axis=slice_axis, n_slices_total=n_slices_total
            )
        elif dist is None:  # a surface metric of a missed or false-positive structure
            values[name] = 0.0 if name.startswith("nsd_") else worst_distance
        elif name == "hd":
            values[name] = surface.hausdorff(dist)
        elif name == "hd95":
            values[name] = surface.hausdorff_percentile(dist, 95.0)
        elif name == "assd":
            values[name] = surface.average_symmetric_surface_distance(dist)
        else:
            tol = nsd_tolerance(name)
            if tol is None:  # pragma: no cover - metric_spec() guarantees a known name
                raise ValueError(f"metric: no implementation for {name!r}")
            values[name] = surface.normalized_surface_distance(dist, tol)
    return status, values, n_ref, n_pred


def _parse_structures(structures: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    if not isinstance(structures, Mapping) or not structures:
        raise ValueError(f"structures: expected a non-empty mapping name -> label values; received {structures!r}")
    out: dict[str, tuple[int, ...]] = {}
    for name, values in structures.items():
        vals = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
        if not vals or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in vals):
            raise ValueError(f"structures[{name!r}]: expected label values that are integers >= 1; received {values!r}")
        out[str(name)] = tuple(int(v) for v in vals)
    return out


def _parse_metrics(metrics: Sequence[str]) -> list[MetricSpec]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    specs: dict[str, MetricSpec] = {}
    for m in metrics:
        spec = metric_spec(m)
        specs.setdefault(spec.name, spec)
    if not specs:
        raise ValueError("metrics: expected at least one metric name; received an empty sequence")
    return list(specs.values())


def resolve_slice_axis(slice_axis: int | None, spacing: Sequence[float]) -> int:
    """Default slice axis: the axis with the largest spacing (the first one on ties)."""
    ndim = len(spacing)
    if slice_axis is None:
        return int(np.argmax(spacing))
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, (int, np.integer)) or not -ndim <= slice_axis < ndim:
        raise ValueError(f"slice_axis: expected an axis in [{-ndim}, {ndim - 1}] or None; received {slice_axis!r}")
    return int(slice_axis) % ndim


def compute_case_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float],
    structures: Mapping[str, Sequence[int]],
    metrics: Sequence[str] = ("dice", "hd95"),
    empty_policy: EmptyPolicy = EmptyPolicy(),
    case_id: str = "",
    slice_axis: int | None = None,
) -> pd.DataFrame:
    """Compute metrics per structure of one case as a long table (``audit.records.METRIC_COLUMNS``).

    Parameters
    ----------
    reference, prediction : numpy.ndarray
        Integer (or boolean) label arrays on the same grid (the reference's native space).
    spacing : sequence of float
        Voxel size in mm per array axis, in array-axis order.
    structures : Mapping[str, Sequence[int]]
        Structure name -> the label values that form it, e.g. ``{"vertebral_body": (1,)}``.
    metrics : sequence of str
        Names from :data:`audit.metrics.METRICS`, or ``"nsd_<tol>mm"``.
    empty_policy : EmptyPolicy
        Values and statuses for missed, false-positive and both-empty structures.
    case_id : str
        Written into the ``case_id`` column.
    slice_axis : int, optional
        Axis of the 2D slices for ``dice_slicewise_cspineseg``; default the axis of largest spacing.

    Returns
    -------
    pandas.DataFrame
        One row per structure x metric, columns ``METRIC_COLUMNS``; ``error`` is None.

    Raises
    ------
    ValueError
        On mismatched shapes, wrong spacing length or values, non-integer labels, unknown metric names,
        or a malformed ``structures`` mapping.
    """
    sp = validate_inputs(reference, prediction, spacing)
    structs = _parse_structures(structures)
    specs = _parse_metrics(metrics)
    axis = resolve_slice_axis(slice_axis, sp)
    if not isinstance(empty_policy, EmptyPolicy):
        raise ValueError(f"empty_policy: expected an EmptyPolicy; received {type(empty_policy).__name__}")
    worst = empty_policy.worst_distance(reference.shape, sp)
    max_label = max(v for vals in structs.values() for v in vals)
    ref_boxes = label_boxes(reference, max_label)
    pred_boxes = label_boxes(prediction, max_label)
    voxel_ml = math.prod(sp) / 1000.0
    rows: list[tuple] = []
    for name, vals in structs.items():
        box = _union([ref_boxes[v - 1] for v in vals] + [pred_boxes[v - 1] for v in vals])
        if box is None:
            status, values, n_ref, n_pred = "both_empty", {s.name: math.nan for s in specs}, 0, 0
        else:
            box = _expand(box, reference.shape, _MARGIN)
            status, values, n_ref, n_pred = structure_values(
                _mask(reference[box], vals),
                _mask(prediction[box], vals),
                spacing=sp,
                specs=specs,
                worst_distance=worst,
                policy=empty_policy,
                slice_axis=axis,
                n_slices_total=reference.shape[axis],
            )
        for spec in specs:
            rows.append((case_id, name, spec.name, values[spec.name], status, n_ref * voxel_ml, n_pred * voxel_ml, None))
    table = pd.DataFrame.from_records(rows, columns=list(METRIC_COLUMNS))
    return table.astype({"value": "float64", "reference_volume_ml": "float64", "predicted_volume_ml": "float64"})
