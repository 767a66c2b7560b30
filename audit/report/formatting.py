"""The single number-formatting rule of the report (documented in docs/report.md, "Number format").

Rule: ``None``/NaN -> "–"; +/-inf -> "∞"/"-∞"; counts as integers; 3 decimals for overlap scores (dice, iou,
nsd_*), rates, ratios and p-values (p below 0.001, 0 included, shown as "<0.001"); 3 significant digits for
model effects, written without an exponent; 1 decimal for percentages;
2 decimals for distances (mm), volumes (ml), seconds and anything else.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["decimals_for", "format_value"]

_THREE = ("dice", "iou", "dice_slicewise_cspineseg", "failure_rate", "ratio", "p")
_PERCENT = ("percent",)


#: Most decimals an effect is written with: smaller effects show as 0.00000000 rather than in scientific notation.
MAX_EFFECT_DECIMALS = 8


def _significant(value: float, digits: int) -> str:
    """``digits`` significant digits in positional notation (never an exponent), at most MAX_EFFECT_DECIMALS decimals."""
    if value == 0:
        return f"{0:.{digits - 1}f}"
    rounded = float(f"{value:.{digits}g}")  # rounding first: 9.996 -> 10.0 has one decimal fewer than 9.99
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{value:.{MAX_EFFECT_DECIMALS}f}" if decimals > MAX_EFFECT_DECIMALS else f"{rounded:.{decimals}f}"


def decimals_for(kind: str) -> int:
    """Decimals shown for a metric or kind: 3 for overlap scores, rates, ratios and p-values,
    1 for percentages, 2 for distances (mm), volumes (ml) and everything else."""
    if kind in _THREE or kind.startswith(("nsd_", "p_")):
        return 3
    if kind in _PERCENT:
        return 1
    return 2


def format_value(value: Any, kind: str = "") -> str:
    """Format a number for display: ``None``/NaN -> "–", +/-inf -> "∞"/"-∞", integers as integers.

    Parameters
    ----------
    value : float, int, str or None
        The value as stored in results.json (``"inf"`` strings are accepted).
    kind : str
        Metric name (``dice``, ``hd95``, ``nsd_2mm``) or a kind (``percent``, ``count``, ``p``).
    """
    if value is None or value == "":
        return "–"
    if isinstance(value, str):
        if value in ("inf", "-inf"):
            return "∞" if value == "inf" else "-∞"
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and not kind:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if kind == "count":
        return str(round(value))
    if (kind == "p" or kind.startswith("p_")) and 0 <= value < 0.001:
        return "<0.001"
    if kind == "effect":  # model coefficients span orders of magnitude (per-year slopes): significant digits, no exponent
        return _significant(value, 3)
    return f"{value:.{decimals_for(kind)}f}"
