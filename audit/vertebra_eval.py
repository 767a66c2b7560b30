"""The per-vertebra stage of a run: VerSe evaluation of every case, per-level summaries, ``vertebrae.csv``.

Runs after the metric stage when the protocol has a ``vertebrae:`` section. Each case's reference and
prediction are translated to VerSe codes (:func:`audit.metrics.vertebrae.verse_numbering`) and evaluated by
:func:`audit.metrics.vertebrae.evaluate_vertebrae`; a VerSe centroid file (manifest column ``centroids_path``)
replaces the reference centres of mass. A case that cannot be evaluated becomes a :class:`CaseFailure`.

Outputs in the run folder: ``vertebrae.csv`` (one row per case x vertebra) and ``vertebrae.json`` (the
definitions, per-level, per-site and per-variant summaries that the report's "Per-vertebra evaluation"
section shows).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from audit.execution import map_cases
from audit.metrics import EmptyPolicy, load_labels_with_affine
from audit.metrics.vertebrae import VERTEBRA_COLUMNS, evaluate_vertebrae, verse_numbering
from audit.ontology import LabelMap
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = ["evaluate_vertebrae_case", "summarize_vertebrae", "run_vertebra_stage", "VERTEBRAE_CSV", "VERTEBRAE_JSON"]

VERTEBRAE_CSV, VERTEBRAE_JSON = "vertebrae.csv", "vertebrae.json"
_ERRORS = ("off_by_one", "mislabelled", "mislocalized", "missed")


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
        ref_raw, spacing, affine = load_labels_with_affine(label_path)
        pred_raw, _, pred_affine = load_labels_with_affine(prediction_path)
        if ref_raw.shape != pred_raw.shape or not np.allclose(affine, pred_affine, atol=1e-3):
            raise ValueError(f"prediction grid {pred_raw.shape} differs from the reference grid {ref_raw.shape} (shape or affine)")
        reference = verse_numbering(ref_raw, reference_map)
        prediction = verse_numbering(pred_raw, prediction_map)
        centroids = None
        if centroids_path:
            from audit.sites.verse import load_verse_centroids

            axcodes = nib.aff2axcodes(affine)
            centroids = load_verse_centroids(centroids_path, reference.shape, axcodes, spacing)
            centroids = {k: v for k, v in centroids.items() if k in set(np.unique(reference).tolist())}
        return evaluate_vertebrae(
            reference, prediction, spacing=spacing, case_id=case_id, reference_centroids=centroids,
            max_distance_mm=max_distance_mm, shape_dice_threshold=shape_dice_threshold, empty_policy=empty_policy,
        )
    except Exception as exc:  # one bad case must never stop the audit
        logger.warning("case %s failed at the per-vertebra stage: %s", case_id, exc)
        return CaseFailure.from_exception(case_id, "vertebrae", exc, site=site)


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
            "identification_rate": float(g["identified"].mean()) if n else math.nan,
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

    ``identification_rate`` pools vertebrae (VerSe's id.rate over a data set); ``case_identification_rate_mean``
    is the mean over cases of each case's rate. Rates are descriptive; the statistics stage does not test them.
    """
    t = table.copy()
    if manifest is not None and len(t):
        t = t.merge(manifest[["case_id", "site"]], on="case_id", how="left")
    elif "site" not in t:
        t["site"] = t["case_id"].str.partition("/")[0]
    ref = t[t["in_reference"]]
    per_case = ref.groupby("case_id")["identified"].mean()
    overall = _group_summary(t.assign(all="all"), "all")[0] if len(t) else {}
    overall.pop("all", None)
    overall["n_cases"] = int(t["case_id"].nunique())
    overall["case_identification_rate_mean"] = float(per_case.mean()) if len(per_case) else math.nan
    variants = []
    cases = t.drop_duplicates("case_id")
    for variant in ("L6", "T13", "missing_T12"):
        ids = cases.loc[cases["variants"].fillna("").str.split(";").apply(lambda v: variant in v), "case_id"]
        sub = ref[ref["case_id"].isin(ids)]
        variants.append({"variant": variant, "n_cases": int(len(ids)), "n_reference": int(len(sub)),
                         "identification_rate": float(sub["identified"].mean()) if len(sub) else math.nan,
                         "off_by_one": int((sub["error"] == "off_by_one").sum())})
    return {"overall": overall, "per_level": _group_summary(t, "vertebra"), "per_site": _group_summary(t, "site"), "variants": variants}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_vertebra_stage(
    run_dir: Path,
    manifest: pd.DataFrame,
    predictions: Mapping[str, str],
    site_maps: Mapping[str, LabelMap],
    prediction_map: LabelMap,
    settings: Any,
    empty_policy: EmptyPolicy,
    *,
    skip: set[str] | frozenset[str] = frozenset(),
    workers: int = 1,
) -> list[CaseFailure]:
    """Evaluate every case with a prediction (except ``skip``), write ``vertebrae.csv``/``.json``, return failures."""
    rows = [r for r in manifest.itertuples(index=False) if r.case_id in predictions and r.case_id not in skip]
    jobs = (
        (
            (r.case_id,),
            dict(
                label_path=r.label_path, prediction_path=predictions[r.case_id], reference_map=site_maps[r.site], prediction_map=prediction_map,
                max_distance_mm=settings.max_distance_mm, shape_dice_threshold=settings.shape_dice_threshold, empty_policy=empty_policy,
                centroids_path=(getattr(r, "centroids_path", None) or None) if isinstance(getattr(r, "centroids_path", None), str) else None,
                site=r.site,
            ),
        )
        for r in rows
    )
    frames, failures = [], []
    for out in map_cases(evaluate_vertebrae_case, jobs, workers=workers):
        (failures if isinstance(out, CaseFailure) else frames).append(out)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(VERTEBRA_COLUMNS))
    table.to_csv(Path(run_dir) / VERTEBRAE_CSV, index=False)
    summary = summarize_vertebrae(table, manifest)
    summary["settings"] = {"max_distance_mm": settings.max_distance_mm, "shape_dice_threshold": settings.shape_dice_threshold}
    summary["failed_cases"] = [f.case_id for f in failures]
    (Path(run_dir) / VERTEBRAE_JSON).write_text(json.dumps(_json_safe(summary), indent=1) + "\n", encoding="utf-8")
    return failures
