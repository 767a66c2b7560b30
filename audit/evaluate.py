"""Per-case evaluation: reference and prediction onto the ontology, then the metric table rows.

This is the unit of parallel work: one case in, its metric-table rows (or a :class:`CaseFailure`) out,
independent of every other case.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

from audit import ontology
from audit.harmonize.limits import ReadLimits
from audit.harmonize.loading import load_label_array
from audit.metrics import EmptyPolicy, compute_case_metrics, load_labels_with_affine
from audit.records import CaseFailure, not_assessed_rows

logger = logging.getLogger(__name__)

__all__ = ["EvaluationSettings", "structure_values", "metric_names", "evaluate_case", "evaluate_arrays", "load_case_labels", "not_annotated"]

#: Absolute tolerance (mm) when comparing the reference's and the prediction's affines.
AFFINE_ATOL_MM = 1e-3


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """What to compute for every case (derived from the protocol)."""

    structures: tuple[str, ...]
    metrics: tuple[str, ...]
    empty_policy: EmptyPolicy = EmptyPolicy()
    limits: ReadLimits = ReadLimits()

    @property
    def granularity(self) -> str:
        """``"level"`` when any protocol structure is a per-level one, else ``"coarse"``."""
        return "level" if any(ontology.structure(s).level for s in self.structures) else "coarse"


def structure_values(structures: Sequence[str], granularity: str) -> dict[str, tuple[int, ...]]:
    """Canonical label values forming each structure at the given granularity.

    At ``"level"`` granularity a coarse structure (``intervertebral_disc``) is the union of its levels'
    values and its own coarse value.
    """
    out: dict[str, tuple[int, ...]] = {}
    for name in structures:
        s = ontology.structure(name)
        if granularity == "coarse":
            out[name] = (ontology.COARSE_VALUES[s.coarse],)
        elif s.level:
            out[name] = (ontology.LEVEL_VALUES[name],)
        else:
            levels = [v for n, v in ontology.LEVEL_VALUES.items() if ontology.structure(n).coarse == name]
            out[name] = tuple(sorted({ontology.COARSE_VALUES[name], *levels}))
    return out


def metric_names(names: Sequence[str], nsd_tolerances_mm: Sequence[float]) -> tuple[str, ...]:
    """Protocol metric names with one ``nsd_<tol>mm`` entry per NSD tolerance."""
    base = tuple(n for n in names if n != "nsd")
    return base + tuple(f"nsd_{t:g}mm" for t in nsd_tolerances_mm)


def not_annotated(structures: Sequence[str], annotated: Collection[str] | None) -> tuple[str, ...]:
    """The protocol structures a reference annotating ``annotated`` cannot score (None: it scores every one).

    Examples
    --------
    >>> not_annotated(("vertebral_body", "spinal_cord"), ("spinal_cord",))
    ('vertebral_body',)
    """
    if annotated is None:
        return ()
    return tuple(s for s in structures if not ontology.is_annotated(s, annotated))


def _load_labels(path: str, role: str, limits: ReadLimits, content: bytes | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A 3-D integer label volume through the guarded reader (its errors name the role, file and cause).

    ``content``: the file's bytes when the caller already read them (:func:`~audit.harmonize.loading.read_file_bytes`).
    """
    if content is None:
        data, spacing, affine = load_labels_with_affine(path, limits=limits, role=role)
        return data, affine, spacing
    loaded = load_label_array(content, role=role, limits=limits, name=str(path))
    return loaded.array, loaded.affine, loaded.spacing


def evaluate_case(
    case_id: str,
    *,
    label_path: str,
    prediction_path: str,
    reference_map: ontology.LabelMap,
    prediction_map: ontology.LabelMap,
    settings: EvaluationSettings,
    site: str = "Unknown",
    annotated: Collection[str] | None = None,
    contents: tuple[bytes, bytes] | None = None,
) -> pd.DataFrame | CaseFailure:
    """Compute the metric-table rows of one case, or return why it failed.

    The metrics are computed in the reference segmentation's native grid with its voxel spacing; the
    prediction must already be on that grid (the inference stage resamples it back). Structures the site's
    reference does not annotate (``annotated``, the site config's :attr:`~audit.sites.SiteConfig.annotated_structures`;
    None = all) get status ``not_assessed`` and no value: the model's output there is never a false positive.
    ``contents`` holds the two files' bytes (reference, prediction) when the caller already read them (the metric
    cache hashes them), so each file is opened once; they are decoded by the same guarded reader.
    """
    stage = "harmonize"
    try:
        reference_raw, prediction_raw, spacing = load_case_labels(label_path, prediction_path, settings, contents=contents)
        return evaluate_arrays(case_id, reference_raw, prediction_raw, spacing, reference_map=reference_map, prediction_map=prediction_map,
                               settings=settings, annotated=annotated)
    except Exception as exc:  # one bad case must never stop the audit
        stage = getattr(exc, "audit_stage", stage)
        logger.warning("case %s failed at %s: %s", case_id, stage, exc)
        return CaseFailure.from_exception(case_id, stage, exc, site=site)


def load_case_labels(
    label_path: str, prediction_path: str, settings: EvaluationSettings, *, contents: tuple[bytes, bytes] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Reference and prediction label arrays of a case (guarded reader, ``settings.limits``), checked to share one grid.

    ``contents``: the two files' bytes (reference, prediction) when already read; the paths then only name them.
    """
    ref_content, pred_content = contents if contents is not None else (None, None)
    reference_raw, ref_affine, spacing = _load_labels(label_path, "reference label", settings.limits, ref_content)
    prediction_raw, pred_affine, _ = _load_labels(prediction_path, "prediction", settings.limits, pred_content)
    if reference_raw.shape != prediction_raw.shape:
        raise ValueError(f"prediction shape {prediction_raw.shape} differs from reference shape {reference_raw.shape}")
    if not np.allclose(ref_affine, pred_affine, atol=AFFINE_ATOL_MM):
        raise ValueError(f"prediction affine differs from the reference affine by more than {AFFINE_ATOL_MM} mm")
    return reference_raw, prediction_raw, spacing


def evaluate_arrays(
    case_id: str,
    reference_raw: np.ndarray,
    prediction_raw: np.ndarray,
    spacing: tuple[float, ...],
    *,
    reference_map: ontology.LabelMap,
    prediction_map: ontology.LabelMap,
    settings: EvaluationSettings,
    annotated: Collection[str] | None = None,
    present: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The metric rows of loaded label arrays (the part of :func:`evaluate_case` after loading); raises on bad input.

    ``present`` may give the distinct values of the two arrays (:func:`audit.ontology.present_values`) when the
    caller has them. An exception raised after the labels are translated carries ``audit_stage = "metrics"``.
    """
    granularity = settings.granularity
    ref_present, pred_present = present if present is not None else (None, None)
    reference = ontology.remap_labels(reference_raw, reference_map, granularity=granularity, present=ref_present)
    if reference.unknown_values:
        raise ValueError(
            f"reference label values {list(reference.unknown_values)} are not in label map {reference_map.name!r} "
            f"(mapped values: {sorted(reference_map.values)}); {reference.unknown_voxels} voxels"
        )
    prediction = ontology.remap_labels(prediction_raw, prediction_map, granularity=granularity, present=pred_present)
    if prediction.unknown_values:
        raise ValueError(
            f"prediction label values {list(prediction.unknown_values)} are not in the model's label map "
            f"{prediction_map.name!r} (mapped values: {sorted(prediction_map.values)})"
        )
    try:
        skipped = not_annotated(settings.structures, annotated)
        scored = [s for s in settings.structures if s not in skipped]
        frames = [not_assessed_rows(case_id, skipped, settings.metrics)] if skipped else []
        if scored:
            frames.append(
                compute_case_metrics(
                    reference.array,
                    prediction.array,
                    spacing=spacing,
                    structures=structure_values(scored, granularity),
                    metrics=settings.metrics,
                    empty_policy=settings.empty_policy,
                    case_id=case_id,
                )
            )
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        order = {s: i for i, s in enumerate(settings.structures)}
        return table.sort_values("structure", key=lambda c: c.map(order), kind="stable", ignore_index=True)
    except Exception as exc:
        exc.audit_stage = "metrics"  # type: ignore[attr-defined]
        raise
