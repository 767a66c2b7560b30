"""Per-vertebra evaluation as the VerSe challenge defines it, with labelling and shape errors kept apart.

Inputs are instance label arrays in **VerSe numbering** (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 28 T13;
:data:`audit.label_maps.VERSE_VERTEBRA_LABELS`); :func:`verse_numbering` converts any known label map to it.

Definitions (Sekuboyina et al., VerSe, Medical Image Analysis 2021; reference code github.com/anjany/verse
``utils/eval_utilities.py`` ``get_hits``, commit 4d6365fd):

* **centroid**: the centre of mass of a vertebra's voxels, in mm (voxel index x spacing), or a given centroid
  (VerSe ``*_ctd.json``) for the reference;
* **identified**: vertebra ``v`` is in both reference and prediction, and among the reference centroids of the
  vertebrae present in *both*, the one closest to the predicted centroid of ``v`` is the reference centroid
  of ``v``, at a distance of at most 20 mm (``get_hits``: distances above 20 are misses, 20.0 is a hit);
* **identification rate** of a case: identified vertebrae / reference vertebrae;
* **localization distance**: ``|predicted centroid - reference centroid|`` of ``v`` in mm, for vertebrae in both;
* **Dice, HD95** per vertebra: label ``v`` against label ``v`` (:func:`audit.metrics.compute_case_metrics`, the
  empty-mask policy of :class:`audit.metrics.EmptyPolicy`);
* **error** of a reference vertebra (one value, exclusive): ``none`` (identified), ``off_by_one`` (the predicted
  centroid nearest to the reference centroid, within 20 mm, carries a label one level away along this patient's
  spine: :data:`audit.label_maps.VERTEBRA_SEQUENCE` with T13 between T12 and L1 only when the reference has a T13,
  so T12/L1 are neighbours in a 12-thoracic spine and T12/T13/L1 in a 13-thoracic one; L5/L6 are neighbours),
  ``mislabelled`` (nearest within
  20 mm, two or more steps away), ``mislocalized`` (the same label is predicted but fails the rule above),
  ``missed`` (no predicted centroid within 20 mm and no prediction of the label);
* **matched Dice**: Dice of the reference vertebra with the predicted vertebra nearest to it (within 20 mm),
  whatever its label; a **shape error** is a matched Dice below ``shape_dice_threshold``. A vertebra labelled
  one level off but well delineated is a labelling error only; a correctly labelled but badly delineated one is
  a shape error only;
* **variants** of the reference (per case): ``L6`` (label 25 present), ``T13`` (28 present), ``missing_T12``
  (T11 and L1 present, T12 absent); the same for the prediction in ``predicted_variants``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from audit.label_maps import VERSE_CODES, VERSE_VERTEBRA_LABELS, VERTEBRA_SEQUENCE, VERTEBRA_VARIANT_VALUES
from audit.metrics.case import compute_case_metrics, find_objects_any_order, validate_inputs
from audit.metrics.registry import EmptyPolicy
from audit.ontology import LEVEL_VALUES, LabelMap, present_values, structure

logger = logging.getLogger(__name__)

__all__ = [
    "IDENTIFICATION_DISTANCE_MM",
    "VERTEBRA_COLUMNS",
    "VERTEBRA_ERRORS",
    "vertebra_centroids",
    "identification_hits",
    "anatomical_variants",
    "verse_numbering",
    "evaluate_vertebrae",
]

#: VerSe's identification radius.
IDENTIFICATION_DISTANCE_MM = 20.0
VERTEBRA_ERRORS: tuple[str, ...] = ("none", "off_by_one", "mislabelled", "mislocalized", "missed", "false_positive")
#: Columns of the per-vertebra table (one row per case x vertebra in the reference or the prediction).
VERTEBRA_COLUMNS: tuple[str, ...] = (
    "case_id",
    "vertebra",
    "label",
    "order",
    "in_reference",
    "in_prediction",
    "identified",
    "localization_mm",
    "error",
    "matched_label",
    "matched_vertebra",
    "matched_dice",
    "shape_error",
    "dice",
    "hd95",
    "status",
    "reference_volume_ml",
    "predicted_volume_ml",
    "variants",
    "predicted_variants",
)
_MAX_CODE = max(VERSE_VERTEBRA_LABELS)


def _validate_codes(arr: np.ndarray, boxes: Sequence[tuple[slice, ...] | None], what: str) -> None:
    """Only VerSe vertebra codes (from the label boxes, plus a min/max pass for values outside 1..28)."""
    bad = [i for i, b in enumerate(boxes, start=1) if b is not None and i not in VERSE_VERTEBRA_LABELS]
    if arr.size and (int(arr.max()) > _MAX_CODE or int(arr.min()) < 0):
        bad += [int(v) for v in present_values(arr) if v != 0 and int(v) not in VERSE_VERTEBRA_LABELS and v not in bad]
    if bad:
        raise ValueError(
            f"{what}: values {bad} are not VerSe vertebra labels (allowed 1-25 and 28; convert with verse_numbering, "
            "which drops the sacrum 26 and coccyx 27)"
        )


def vertebra_centroids(labels: np.ndarray, spacing: Sequence[float]) -> dict[int, np.ndarray]:
    """Centre of mass (mm, array axis order: index x spacing) of every vertebra label present.

    One :func:`scipy.ndimage.find_objects` pass, then each centroid on its label's bounding box.

    Examples
    --------
    >>> a = np.zeros((4, 1, 10), dtype=np.uint8); a[:, :, 2:4] = 20
    >>> vertebra_centroids(a, (1.0, 1.0, 2.0))[20].tolist()
    [1.5, 0.0, 5.0]
    """
    arr = np.asarray(labels)
    if arr.size == 0 or not arr.any():
        return {}
    return _centroids(arr, find_objects_any_order(arr, _MAX_CODE), spacing)


def _centroids(arr: np.ndarray, boxes: Sequence[tuple[slice, ...] | None], spacing: Sequence[float]) -> dict[int, np.ndarray]:
    sp = np.asarray(spacing, dtype=np.float64)
    out: dict[int, np.ndarray] = {}
    for index, box in enumerate(boxes, start=1):
        if box is None or index not in VERSE_VERTEBRA_LABELS:
            continue
        com = ndimage.center_of_mass(arr[box] == index)
        out[index] = (np.asarray(com) + [s.start for s in box]) * sp
    return out


def identification_hits(reference: Mapping[int, np.ndarray], predicted: Mapping[int, np.ndarray], *, max_distance_mm: float = IDENTIFICATION_DISTANCE_MM) -> dict[int, bool]:
    """VerSe ``get_hits``: for each reference vertebra, whether it is identified (see the module docstring).

    Examples
    --------
    Two vertebrae 30 mm apart, predicted 5 mm off: both identified; the prediction of 21 moved onto 22's
    reference position is closest to 22, so 21 is not identified:

    >>> ref = {21: np.array([0.0, 0, 0]), 22: np.array([0.0, 0, 30])}
    >>> identification_hits(ref, {21: np.array([0.0, 0, 5]), 22: np.array([0.0, 0, 35])})
    {21: True, 22: True}
    >>> identification_hits(ref, {21: np.array([0.0, 0, 29]), 22: np.array([0.0, 0, 35])})
    {21: False, 22: True}
    """
    both = sorted(set(reference) & set(predicted))
    hits = {v: False for v in sorted(reference)}
    if not both:
        return hits
    gt = np.stack([reference[v] for v in both])
    for v in both:
        d = np.linalg.norm(gt - predicted[v], axis=1)
        nearest = int(np.argmin(d))
        hits[v] = both[nearest] == v and float(d[nearest]) <= max_distance_mm
    return hits


def anatomical_variants(codes: Sequence[int] | set[int]) -> tuple[str, ...]:
    """Variants shown by a set of VerSe codes: ``L6``, ``T13``, ``missing_T12`` (T11 and L1 present, T12 absent).

    Examples
    --------
    >>> anatomical_variants({18, 20, 21})
    ('missing_T12',)
    >>> anatomical_variants({19, 28, 20, 25})
    ('L6', 'T13')
    """
    present = set(int(c) for c in codes)
    out = []
    if VERSE_CODES["L6"] in present:
        out.append("L6")
    if VERSE_CODES["T13"] in present:
        out.append("T13")
    if {VERSE_CODES["T11"], VERSE_CODES["L1"]} <= present and VERSE_CODES["T12"] not in present:
        out.append("missing_T12")
    return tuple(out)


def verse_numbering(array: np.ndarray, label_map: LabelMap, *, present: np.ndarray | None = None) -> np.ndarray:
    """Translate a label array to VerSe vertebra codes (uint8), dropping every non-vertebra value.

    Vertebra levels of ``label_map`` (C1..L6) keep their ontology code, which equals the VerSe code; values that
    :data:`audit.label_maps.VERTEBRA_VARIANT_VALUES` lists for this map (VerSe 28) become T13 = 28; S1/sacrum,
    discs, coarse classes and ignored values become 0. Values the map does not know raise ``ValueError``.

    Examples
    --------
    >>> from audit.label_maps import get_label_map
    >>> verse_numbering(np.array([0, 27, 31, 25, 5]), get_label_map("totalseg_ct_v2")).tolist()
    [0, 24, 20, 0, 0]
    """
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"verse_numbering: label array of dtype {arr.dtype} holds non-integer values")
        arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise ValueError("verse_numbering: negative label values found")
    variants = VERTEBRA_VARIANT_VALUES.get(label_map.name, {})
    known = set(label_map.values) | set(label_map.ignore) | set(variants) | {0}
    present = present_values(arr) if present is None else np.asarray(present)
    unknown = [int(v) for v in present if int(v) not in known]
    if unknown:
        raise ValueError(f"verse_numbering: values {unknown} are not in label map {label_map.name!r} (mapped: {sorted(label_map.values)})")
    lut = np.zeros(int(present.max()) + 1 if present.size else 1, dtype=np.uint8)
    for value, name in label_map.values.items():
        s = structure(name)
        if value < lut.size and s.level and s.coarse == "vertebra" and name in VERSE_CODES:
            lut[value] = VERSE_CODES[name]
    for value, name in variants.items():
        if value < lut.size:
            lut[value] = VERSE_CODES[name]
    assert all(LEVEL_VALUES[n] == VERSE_CODES[n] for n in VERSE_CODES if n in LEVEL_VALUES)  # one numbering
    if all(int(lut[v]) == int(v) for v in present) and arr.dtype.kind == "u":
        return arr  # already VerSe codes (verse, ctspine1k): no copy of a CT-size array
    return lut[arr]


def _steps(a: str, b: str, has_t13: bool) -> int:
    """Levels between vertebrae ``a`` and ``b`` along this patient's spine: T13 is a level only when the reference
    has one (or one of the two names is T13); otherwise T12 and L1 are neighbours."""
    sequence = VERTEBRA_SEQUENCE if has_t13 or "T13" in (a, b) else tuple(v for v in VERTEBRA_SEQUENCE if v != "T13")
    return abs(sequence.index(a) - sequence.index(b))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    n = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.count_nonzero(a & b)) / n if n else math.nan


def _box(boxes: Sequence[tuple[slice, ...] | None], shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(slice(max(0, min(b[i].start for b in present) - 1), min(shape[i], max(b[i].stop for b in present) + 1)) for i in range(len(shape)))


def evaluate_vertebrae(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float],
    case_id: str = "",
    reference_centroids: Mapping[int, np.ndarray] | None = None,
    max_distance_mm: float = IDENTIFICATION_DISTANCE_MM,
    shape_dice_threshold: float = 0.7,
    empty_policy: EmptyPolicy = EmptyPolicy(),
) -> pd.DataFrame:
    """Per-vertebra identification, localization, labelling and shape errors, Dice and HD95 of one case.

    Parameters
    ----------
    reference, prediction : numpy.ndarray
        Integer arrays in VerSe numbering (:func:`verse_numbering`), same shape, the reference's grid.
    spacing : sequence of float
        Voxel size in mm per array axis.
    case_id : str
        Written into the ``case_id`` column.
    reference_centroids : Mapping[int, numpy.ndarray], optional
        Reference centroids in mm (array axis order, index x spacing), e.g. from a VerSe ``*_ctd.json``;
        default: the reference mask's centres of mass. Every reference vertebra must have one.
    max_distance_mm : float
        Identification radius (VerSe: 20 mm).
    shape_dice_threshold : float
        Matched Dice below this is a shape error.
    empty_policy : EmptyPolicy
        Scores of missed and false-positive vertebrae (Dice 0, HD95 worst-case distance).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`VERTEBRA_COLUMNS`; one row per vertebra in the reference or the prediction, in
        :data:`audit.label_maps.VERTEBRA_SEQUENCE` order (``order`` is the 1-based position in it). Vertebrae only
        in the prediction have ``error = "false_positive"``.

    Raises
    ------
    ValueError
        On mismatched shapes, non-VerSe values, a bad threshold, or missing reference centroids.
    """
    sp = validate_inputs(reference, prediction, spacing)
    if not (isinstance(max_distance_mm, (int, float)) and max_distance_mm > 0):
        raise ValueError(f"max_distance_mm: expected a positive number; received {max_distance_mm!r}")
    if not (isinstance(shape_dice_threshold, (int, float)) and 0 <= shape_dice_threshold <= 1):
        raise ValueError(f"shape_dice_threshold: expected a number in [0, 1]; received {shape_dice_threshold!r}")
    ref_boxes = find_objects_any_order(reference, _MAX_CODE)
    pred_boxes = find_objects_any_order(prediction, _MAX_CODE)
    _validate_codes(reference, ref_boxes, "reference")
    _validate_codes(prediction, pred_boxes, "prediction")
    ref_codes = {i + 1 for i, b in enumerate(ref_boxes) if b is not None}
    pred_codes = {i + 1 for i, b in enumerate(pred_boxes) if b is not None}
    ref_centroids = dict(reference_centroids) if reference_centroids is not None else _centroids(reference, ref_boxes, sp)
    missing = sorted(ref_codes - set(ref_centroids))
    if missing:
        raise ValueError(f"reference_centroids: no centroid for reference vertebrae {[VERSE_VERTEBRA_LABELS[c] for c in missing]}")
    ref_centroids = {c: np.asarray(ref_centroids[c], dtype=np.float64) for c in ref_codes}
    pred_centroids = _centroids(prediction, pred_boxes, sp)
    hits = identification_hits(ref_centroids, pred_centroids, max_distance_mm=max_distance_mm)
    codes = sorted(ref_codes | pred_codes, key=lambda c: VERTEBRA_SEQUENCE.index(VERSE_VERTEBRA_LABELS[c]))
    if codes:
        per_label = compute_case_metrics(
            reference, prediction, spacing=sp, structures={VERSE_VERTEBRA_LABELS[c]: (c,) for c in codes},
            metrics=("dice", "hd95"), empty_policy=empty_policy, case_id=case_id,
        ).pivot_table(index="structure", values="value", columns="metric", aggfunc="first", dropna=False)
    has_t13 = VERSE_CODES["T13"] in ref_codes
    variants = ";".join(anatomical_variants(ref_codes))
    predicted_variants = ";".join(anatomical_variants(pred_codes))
    voxel_ml = math.prod(sp) / 1000.0
    pred_list = sorted(pred_centroids)
    pred_stack = np.stack([pred_centroids[c] for c in pred_list]) if pred_list else np.zeros((0, len(sp)))
    rows = []
    for code in codes:
        name = VERSE_VERTEBRA_LABELS[code]
        in_ref, in_pred = code in ref_codes, code in pred_codes
        n_ref = int(np.count_nonzero(reference[ref_boxes[code - 1]] == code)) if in_ref else 0
        n_pred = int(np.count_nonzero(prediction[pred_boxes[code - 1]] == code)) if in_pred else 0
        localization = float(np.linalg.norm(pred_centroids[code] - ref_centroids[code])) if in_ref and in_pred else math.nan
        matched, matched_dice, error = None, math.nan, "false_positive"
        if in_ref:
            if pred_list:
                d = np.linalg.norm(pred_stack - ref_centroids[code], axis=1)
                j = int(np.argmin(d))
                if float(d[j]) <= max_distance_mm:
                    matched = pred_list[j]
            if matched is not None:
                box = _box([ref_boxes[code - 1], pred_boxes[matched - 1]], reference.shape)
                matched_dice = _dice(reference[box] == code, prediction[box] == matched)
            if hits[code]:
                error = "none"
            elif matched is None:
                error = "mislocalized" if in_pred else "missed"
            elif matched == code:
                error = "mislocalized"
            else:
                error = "off_by_one" if _steps(name, VERSE_VERTEBRA_LABELS[matched], has_t13) == 1 else "mislabelled"
        status = "ok" if in_ref and in_pred else "missed" if in_ref else "false_positive"
        rows.append(
            (
                case_id, name, code, VERTEBRA_SEQUENCE.index(name) + 1, in_ref, in_pred, bool(hits.get(code, False)),
                localization, error, matched if matched is not None else pd.NA,
                VERSE_VERTEBRA_LABELS[matched] if matched is not None else None, matched_dice,
                bool(matched is not None and matched_dice < shape_dice_threshold),
                float(per_label.loc[name, "dice"]), float(per_label.loc[name, "hd95"]), status,
                n_ref * voxel_ml, n_pred * voxel_ml, variants, predicted_variants,
            )
        )
    table = pd.DataFrame.from_records(rows, columns=list(VERTEBRA_COLUMNS))
    return table.astype(
        {"label": "int64", "order": "int64", "in_reference": "bool", "in_prediction": "bool", "identified": "bool",
         "localization_mm": "float64", "matched_label": "Int64", "matched_dice": "float64", "shape_error": "bool",
         "dice": "float64", "hd95": "float64", "reference_volume_ml": "float64", "predicted_volume_ml": "float64"}
    )
