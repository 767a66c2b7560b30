"""The metric registry and the empty-mask policy.

Every metric the package computes is named here with its direction, unit and range, so that the
statistics and the report never guess whether a larger value is better. The empty-mask policy
(:class:`EmptyPolicy`) lives here too: it is the one place that decides what a missed or a
spurious structure scores.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

logger = logging.getLogger(__name__)

__all__ = ["MetricSpec", "METRICS", "metric_spec", "nsd_tolerance", "EmptyPolicy"]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """What a metric means and how to read it.

    Parameters
    ----------
    name : str
        Metric name as it appears in the ``metric`` column of the metric table.
    higher_is_better : bool
        Direction. For a ``signed`` metric it refers to the magnitude ``|value|`` (ideal 0).
    unit : str
        ``"1"`` for a ratio, ``"mm"`` or ``"ml"``.
    bounded : bool
        Whether the value lies in ``[0, 1]``.
    description : str
        One-line definition (the full one is in ``docs/metrics.md``).
    signed : bool
        True for a signed error whose ideal value is 0 (``rel_volume_error``).
    """

    name: str
    higher_is_better: bool
    unit: str
    bounded: bool
    description: str
    signed: bool = False


_NSD_RE = re.compile(r"^nsd_(?P<tol>[0-9]+(?:\.[0-9]+)?)mm$")


def _nsd_spec(tolerance_mm: float) -> MetricSpec:
    return MetricSpec(
        name=f"nsd_{tolerance_mm:g}mm",
        higher_is_better=True,
        unit="1",
        bounded=True,
        description=(
            f"normalized surface distance (surface Dice) at {tolerance_mm:g} mm: the fraction of surface voxels "
            "of both masks lying within the tolerance of the other surface (voxel-count weighted, as MONAI)"
        ),
    )


_FIXED = (
    MetricSpec("dice", True, "1", True, "volumetric Dice similarity coefficient 2|A∩B|/(|A|+|B|)"),
    MetricSpec("iou", True, "1", True, "intersection over union (Jaccard) |A∩B|/|A∪B|"),
    MetricSpec("hd95", False, "mm", False, "95th-percentile Hausdorff distance: max of the two directed 95th percentiles"),
    MetricSpec("hd", False, "mm", False, "Hausdorff distance: the largest surface-to-surface distance, both directions"),
    MetricSpec("assd", False, "mm", False, "average symmetric surface distance: mean over the surface points of both masks"),
    _nsd_spec(1.0),
    _nsd_spec(2.0),
    MetricSpec(
        "rel_volume_error", False, "1", False, "signed relative volume error (V_pred - V_ref) / V_ref", signed=True
    ),
    MetricSpec("abs_volume_error_ml", False, "ml", False, "absolute volume difference |V_pred - V_ref| in ml"),
    MetricSpec(
        "dice_slicewise_cspineseg",
        True,
        "1",
        True,
        "CSpineSeg's published Dice: mean over all 2D slices, slices empty in both masks scored 1",
    ),
)

#: Registry of named metrics. NSD at any tolerance is available through :func:`metric_spec`
#: (``"nsd_0.5mm"``, ``"nsd_3mm"``); two common tolerances are listed here.
METRICS: Mapping[str, MetricSpec] = MappingProxyType({m.name: m for m in _FIXED})


def metric_spec(name: str) -> MetricSpec:
    """Return the specification of a metric by name.

    Parameters
    ----------
    name : str
        A key of :data:`METRICS`, or ``"nsd_<tolerance>mm"`` for any non-negative tolerance in mm.
        The returned spec carries the canonical name (``"nsd_2.0mm"`` -> ``"nsd_2mm"``).

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the allowed names.
    """
    if not isinstance(name, str):
        raise ValueError(f"metric name must be a string; received {name!r}")
    if name in METRICS:
        return METRICS[name]
    match = _NSD_RE.match(name)
    if match:
        return _nsd_spec(float(match.group("tol")))
    raise ValueError(
        f"metric: unknown name {name!r}; allowed values are {sorted(METRICS)} "
        "or 'nsd_<tolerance>mm' with a tolerance in mm (e.g. 'nsd_1.5mm')"
    )


def nsd_tolerance(name: str) -> float | None:
    """Return the tolerance in mm of an NSD metric name, or None for other metrics."""
    match = _NSD_RE.match(name)
    return float(match.group("tol")) if match else None


@dataclasses.dataclass(frozen=True)
class EmptyPolicy:
    """What a structure scores when the reference or the prediction is empty.

    The status of a structure follows from voxel counts: ``missed`` (in the reference, not in the
    prediction), ``false_positive`` (in the prediction, not in the reference), ``both_empty``, or ``ok``.

    * ``missed`` and ``false_positive``: ``dice``, ``iou`` and every ``nsd_*`` are 0; ``hd``, ``hd95``
      and ``assd`` are :meth:`worst_distance`; ``abs_volume_error_ml`` is the non-empty volume;
      ``rel_volume_error`` is -1 for ``missed`` and ``false_positive_rel_volume_error`` (default
      ``+inf``: the mathematical value, loud in any mean) for ``false_positive``;
      ``dice_slicewise_cspineseg`` is computed as CSpineSeg computes it (slices empty in both score 1).
    * ``both_empty``: every value is NaN with status ``both_empty``, so that it is excluded from means
      and counted in detection tables; never a NaN under status ``ok``.

    Parameters
    ----------
    missed_distance : float or "diagonal"
        Worst-case surface distance in mm for ``missed`` and ``false_positive`` structures. ``"diagonal"``
        is the physical diagonal of the image, ``sqrt(sum((n_i * s_i)^2))``, larger than any distance
        measurable in it. ``float("inf")`` is allowed.
    false_positive_rel_volume_error : float
        Value of ``rel_volume_error`` when the reference is empty (division by a zero volume).
    """

    missed_distance: float | str = "diagonal"
    false_positive_rel_volume_error: float = math.inf

    def __post_init__(self) -> None:
        md = self.missed_distance
        if isinstance(md, str):
            if md != "diagonal":
                raise ValueError(f"EmptyPolicy.missed_distance: allowed 'diagonal' or a float in mm >= 0; received {md!r}")
        elif isinstance(md, bool) or not isinstance(md, (int, float)) or math.isnan(md) or md < 0:
            raise ValueError(f"EmptyPolicy.missed_distance: allowed 'diagonal' or a float in mm >= 0; received {md!r}")
        fp = self.false_positive_rel_volume_error
        if not isinstance(fp, (int, float)) or isinstance(fp, bool) or math.isnan(fp):
            raise ValueError(
                f"EmptyPolicy.false_positive_rel_volume_error: must be a number (not NaN); received {fp!r}"
            )

    def worst_distance(self, shape: Sequence[int], spacing: Sequence[float]) -> float:
        """Return the worst-case distance in mm for an image of this shape and spacing."""
        if self.missed_distance == "diagonal":
            return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))
        return float(self.missed_distance)
