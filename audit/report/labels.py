"""Reader-facing names: metrics with their units, structures, axes, tests and comparisons.

One home for every word the report shows in place of an internal name, so a column heading or a figure axis
cannot disagree with a sentence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["axis_label", "comparison_label", "metric_label", "structure_label", "readable_test"]

_METRIC_NAMES = {"dice": "Dice", "iou": "IoU", "hd": "HD", "hd95": "HD95", "assd": "ASSD", "dice_slicewise_cspineseg": "slice-averaged Dice"}
_TESTS = {
    "welch": "Welch t-test",
    "welch (site means)": "Welch t-test on site means",
    "mann_whitney": "Mann-Whitney U test",
    "permutation": "permutation test",
    "alexander_govern": "Alexander-Govern test (all groups)",
    "kruskal": "Kruskal-Wallis test (all groups)",
    "permutation_between_ss": "permutation test, between-group SS (all groups)",
    "none": "not tested",
    "none (descriptive only)": "not tested (group below minimum size)",
}
_COMPARISONS = {"vs_reference": "vs reference", "worst_vs_best": "worst vs best"}


def metric_label(name: str, definitions: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """``Dice``, ``HD95 (mm)``, ``NSD 2 mm``: the metric's name with its unit when it has one.

    Examples
    --------
    >>> metric_label("hd95", {"hd95": {"unit": "mm"}}), metric_label("nsd_2mm"), metric_label("dice", {"dice": {"unit": ""}})
    ('HD95 (mm)', 'NSD 2 mm', 'Dice')
    """
    if name.startswith("nsd_") and name.endswith("mm"):
        return f"NSD {name[4:-2]} mm"
    unit = str(((definitions or {}).get(name) or {}).get("unit") or "")
    base = _METRIC_NAMES.get(name, name.replace("_", " "))
    return f"{base} ({unit})" if unit and unit not in ("1", "fraction", "ratio") else base


def structure_label(name: str) -> str:
    """``vertebral body`` for ``vertebral_body``."""
    return name.replace("_", " ")


def axis_label(name: str) -> str:
    """``field strength`` for ``field_strength``; intersections keep their ``x``."""
    return name.replace("_", " ")


def readable_test(code: Any) -> str:
    """A test's name for readers: ``Welch t-test`` for ``welch``; unknown codes are shown as they are."""
    return _TESTS.get(str(code), str(code).replace("_", " "))


def comparison_label(code: Any) -> str:
    """``vs reference`` / ``worst vs best``."""
    return _COMPARISONS.get(str(code), str(code).replace("_", " "))
