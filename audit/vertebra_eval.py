"""The per-vertebra stage of a run: VerSe evaluation of every case, per-level summaries, ``vertebrae.csv``.

Runs inside the metric stage when the protocol has a ``vertebrae:`` section (one read of each label pair). Each case's reference and
prediction are translated to VerSe codes (:func:`audit.metrics.vertebrae.verse_numbering`) and evaluated by
:func:`audit.metrics.vertebrae.evaluate_vertebrae`; a VerSe centroid file (manifest column ``centroids_path``)
replaces the reference centres of mass. A case that cannot be evaluated becomes a :class:`CaseFailure`.

Outputs in the run folder: ``vertebrae.csv`` (one row per case x vertebra) and ``vertebrae.json`` (the
definitions, per-level, per-site and per-variant summaries that the report's "Per-vertebra evaluation"
section shows).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Collection, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from audit.evaluate import AFFINE_ATOL_MM, EvaluationSettings, evaluate_arrays
from audit.fileio import atomic_write_text
from audit.metrics import EmptyPolicy, load_labels_with_affine
from audit.metrics.vertebrae import VERTEBRA_COLUMNS, evaluate_vertebrae, verse_numbering
from audit.ontology import LabelMap, present_values
from audit.records import CaseFailure
from audit.runfolder import VERTEBRAE, VERTEBRAE_SUMMARY, RunFolder

logger = logging.getLogger(__name__)

__all__ = ["evaluate_vertebrae_case", "evaluate_case_and_vertebrae", "summarize_vertebrae", "write_vertebra_outputs"]

_ERRORS = ("off_by_one", "mislabelled", "mislocalized", "missed")


def _vertebra_rows(
    case_id: str,
    ref_raw: np.ndarray,
    pred_raw: np.ndarray,
    spacing: tuple[float, ...],
    affine: np.ndarray,
    *,
    reference_map: LabelMap,
    prediction_map: LabelMap,
    max_distance_mm: float,
    shape_dice_threshold: float,
    empty_policy: EmptyPolicy,
    centroids_path: str | None,
    present: tuple[np.ndarray, np.ndarray] | None = None,
    full_shape: tuple[int, ...] | None = None,
    offset: tuple[int, ...] | None = None,
) -> pd.DataFrame:
    """Per-vertebra rows; ``ref_raw``/``pred_raw`` may be a crop at voxel ``offset`` of arrays of ``full_shape``."""
    ref_present, pred_present = present if present is not None else (None, None)
    reference = verse_numbering(ref_raw, reference_map, present=ref_present)
    prediction = verse_numbering(pred_raw, prediction_map, present=pred_present)
    centroids = None
    if centroids_path:
        from audit.sites.verse import load_verse_centroids

        centroids = load_verse_centroids(centroids_path, full_shape or reference.shape, nib.aff2axcodes(affine), spacing)
        shift = np.asarray(offset or (0,) * reference.ndim, dtype=np.float64) * np.asarray(spacing)
        codes = set(present_values(reference).tolist())
        centroids = {k: v - shift for k, v in centroids.items() if k in codes}
    return evaluate_vertebrae(
        reference, prediction, spacing=spacing, case_id=case_id, reference_centroids=centroids,
        max_distance_mm=max_distance_mm, shape_dice_threshold=shape_dice_threshold, empty_policy=empty_policy,
    )


def _load_pair(label_path: str, prediction_path: str, limits: Any = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], np.ndarray]:
    ref_raw, spacing, affine = load_labels_with_affine(label_path, limits=limits, role="reference label")
    pred_raw, _, pred_affine = load_labels_with_affine(prediction_path, limits=limits, role="prediction")
    if ref_raw.shape != pred_raw.shape or not np.allclose(affine, pred_affine, atol=AFFINE_ATOL_MM):
        raise ValueError(f"prediction grid {pred_raw.shape} differs from the reference grid {ref_raw.shape} (shape or affine)")
    return ref_raw, pred_raw, spacing, affine


def evaluate_vertebrae_case(
    case_id: str,
    *,
    label_path: str,
    prediction_path: str,
    reference_map: LabelMap,
    prediction_map: LabelMap,
    max_distance_mm: float,
    shape_dice_threshold: float,
    empty_policy: EmptyPolicy,
    centroids_path: str | None = None,
    site: str = "Unknown",
) -> pd.DataFrame | CaseFailure:
    """The per-vertebra rows of one case, or why it failed (never raises)."""
    try:
        ref_raw, pred_raw, spacing, affine = _load_pair(label_path, prediction_path)
        return _vertebra_rows(case_id, ref_raw, pred_raw, spacing, affine, reference_map=reference_map, prediction_map=prediction_map,
                              max_distance_mm=max_distance_mm, shape_dice_threshold=shape_dice_threshold, empty_policy=empty_policy,
                              centroids_path=centroids_path)
    except Exception as exc:  # one bad case must never stop the audit
        logger.warning("case %s failed at the per-vertebra stage: %s", case_id, exc)
        return CaseFailure.from_exception(case_id, "vertebrae", exc, site=site)


def evaluate_case_and_vertebrae(
    case_id: str,
    *,
    label_path: str,
    prediction_path: str,
    reference_map: LabelMap,
    prediction_map: LabelMap,
    settings: EvaluationSettings,
    vertebrae: Any,
    centroids_path: str | None = None,
    site: str = "Unknown",
    annotated: Collection[str] | None = None,
) -> tuple[pd.DataFrame | CaseFailure, pd.DataFrame | CaseFailure | None]:
    """:func:`audit.evaluate.evaluate_case` and the per-vertebra rows from one read of the two label files.

    Returns ``(metric rows or failure, vertebra rows or failure)``; the second is None when loading failed (the
    first then holds the failure). Reading a 512 x 512 x 300 mask pair once instead of twice saves about a third of
    the per-case time (docs/performance.md).
    """
    try:
        ref_raw, pred_raw, spacing, affine = _load_pair(label_path, prediction_path, getattr(settings, "limits", None))
    except Exception as exc:
        logger.warning("case %s failed at harmonize: %s", case_id, exc)
        return CaseFailure.from_exception(case_id, "harmonize", exc, site=site), None
    full_shape = ref_raw.shape
    box = _crop_box(ref_raw, pred_raw, settings)
    offset = tuple(b.start for b in box) if box is not None else None
    if box is not None:
        ref_raw, pred_raw = ref_raw[box], pred_raw[box]
        # the worst-case distance of a missed structure stays the full image's diagonal: identical numbers
        worst = settings.empty_policy.worst_distance(full_shape, spacing)
        settings = dataclasses.replace(settings, empty_policy=dataclasses.replace(settings.empty_policy, missed_distance=worst))
    present = (present_values(ref_raw), present_values(pred_raw))  # one count per array, shared by both evaluations
    try:
        metrics: pd.DataFrame | CaseFailure = evaluate_arrays(case_id, ref_raw, pred_raw, spacing, reference_map=reference_map,
                                                             prediction_map=prediction_map, settings=settings, annotated=annotated, present=present)
    except Exception as exc:
        logger.warning("case %s failed: %s", case_id, exc)
        metrics = CaseFailure.from_exception(case_id, getattr(exc, "audit_stage", "harmonize"), exc, site=site)
    try:
        rows: pd.DataFrame | CaseFailure = _vertebra_rows(
            case_id, ref_raw, pred_raw, spacing, affine, reference_map=reference_map, prediction_map=prediction_map,
            max_distance_mm=vertebrae.max_distance_mm, shape_dice_threshold=vertebrae.shape_dice_threshold,
            empty_policy=settings.empty_policy, centroids_path=centroids_path, present=present, full_shape=full_shape, offset=offset)
    except Exception as exc:
        logger.warning("case %s failed at the per-vertebra stage: %s", case_id, exc)
        rows = CaseFailure.from_exception(case_id, "vertebrae", exc, site=site)
    return metrics, rows


#: Voxels kept around the foreground box: surface extraction near the crop border sees the same zeros it would see
#: in the full array (a structure touching the image border is at the border in both).
_CROP_MARGIN = 2


def _crop_box(ref: np.ndarray, pred: np.ndarray, settings: EvaluationSettings) -> tuple[slice, ...] | None:
    """The box of ref != 0 or pred != 0 plus a margin, or None when cropping could change a metric (CSpineSeg's
    slice-wise Dice counts every slice) or would not save much (box over half the volume).

    Every metric here depends on the voxels of the two masks only, except the worst-case distance (taken from the
    full image by the caller) and ``dice_slicewise_cspineseg``; so the rows are identical to the uncropped ones
    (``tests/ct/test_ct_vertebrae.py::test_cropped_evaluation_equals_full``), at a fraction of the passes over a
    512 x 512 x 300 volume.
    """
    if "dice_slicewise_cspineseg" in settings.metrics or ref.ndim != 3:
        return None
    extents = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        used = np.flatnonzero(np.any(ref, axis=other) | np.any(pred, axis=other))
        if not used.size:
            return None
        extents.append(slice(max(0, int(used[0]) - _CROP_MARGIN), min(ref.shape[axis], int(used[-1]) + 1 + _CROP_MARGIN)))
    box = tuple(extents)
    if np.prod([b.stop - b.start for b in box]) > 0.5 * ref.size:
        return None
    return box


def _mean(series: pd.Series) -> float:
    values = series.dropna()
    return float(values.mean()) if len(values) else math.nan


def _group_summary(table: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    ref = table[table["in_reference"]]
    out = []
    keys = [k for k in dict.fromkeys(table.sort_values("order")[by])] if by == "vertebra" else sorted(table[by].dropna().unique())
    for key in keys:
        g = ref[ref[by] == key]
        fp = int(((table[by] == key) & ~table["in_reference"]).sum())
        n = len(g)
        row = {
            by: key,
            "n_reference": n,
            "identified": int(g["identified"].sum()),
            "identification_percent": 100.0 * float(g["identified"].mean()) if n else math.nan,
            "localization_mm_mean": _mean(g["localization_mm"]),
            "dice_mean": _mean(g["dice"]),
            "hd95_median": float(g["hd95"].median()) if n else math.nan,
            **{e: int((g["error"] == e).sum()) for e in _ERRORS},
            "shape_errors": int(g["shape_error"].sum()),
            "false_positive": fp,
        }
        out.append(row)
    return out


def summarize_vertebrae(table: pd.DataFrame, manifest: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per-level, per-site, per-variant and overall summaries of a ``vertebrae.csv`` table (plain JSON data).

    Each is a list of records keyed as the other tables of results.json: ``overall`` (one record, ``group = "all"``),
    ``per_level`` (``structure`` = the vertebra), ``per_site`` (``site``), ``variants`` (``group`` = L6, T13, missing_T12).
    ``identification_percent`` pools vertebrae (VerSe's id.rate over a data set, x 100);
    ``case_identification_percent_mean`` is the mean over cases of each case's rate. Rates are descriptive; the
    statistics stage does not test them.
    """
    t = table.copy()
    if manifest is not None and len(t):
        t = t.merge(manifest[["case_id", "site"]], on="case_id", how="left")
    elif "site" not in t:
        t["site"] = t["case_id"].str.partition("/")[0]
    ref = t[t["in_reference"]]
    per_case = ref.groupby("case_id")["identified"].mean()
    overall = _group_summary(t.assign(group="all"), "group")[0] if len(t) else {"group": "all"}
    overall["n_cases"] = int(t["case_id"].nunique())
    overall["case_identification_percent_mean"] = 100.0 * float(per_case.mean()) if len(per_case) else math.nan
    variants = []
    cases = t.drop_duplicates("case_id")
    for variant in ("L6", "T13", "missing_T12"):
        ids = cases.loc[cases["variants"].fillna("").str.split(";").apply(lambda v: variant in v), "case_id"]
        sub = ref[ref["case_id"].isin(ids)]
        variants.append({"group": variant, "n_cases": int(len(ids)), "n_reference": int(len(sub)),
                         "identification_percent": 100.0 * float(sub["identified"].mean()) if len(sub) else math.nan,
                         "off_by_one": int((sub["error"] == "off_by_one").sum())})
    per_level = [{"structure": r.pop("vertebra"), **r} for r in _group_summary(t, "vertebra")]
    return {"overall": [overall], "per_level": per_level, "per_site": _group_summary(t, "site"), "variants": variants}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_vertebra_outputs(folder: RunFolder, frames: list[pd.DataFrame], failures: list[CaseFailure], manifest: pd.DataFrame, settings: Any) -> dict[str, Any]:
    """Write ``vertebrae.csv`` and ``vertebrae.json`` (summaries, settings, the cases that could not be evaluated).

    Returns the JSON document, which the pipeline also puts into results.json under ``vertebrae``.
    """
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(VERTEBRA_COLUMNS))
    folder.write_csv(VERTEBRAE, table)
    summary = summarize_vertebrae(table, manifest)
    summary["settings"] = {"max_distance_mm": settings.max_distance_mm, "shape_dice_threshold": settings.shape_dice_threshold}
    summary["failed_cases"] = [f.case_id for f in failures]
    document = _json_safe(summary)
    atomic_write_text(folder.path(VERTEBRAE_SUMMARY), json.dumps(document, indent=1) + "\n")
    return document
