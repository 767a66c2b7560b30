"""Segmentation metrics: per case and structure, and per vertebral or disc level.

Public API
----------
* :func:`compute_case_metrics` - the long metric table (``audit.records.METRIC_COLUMNS``).
* :func:`compute_level_metrics` - per-level detection and Dice (instance labels or connected components).
* :class:`EmptyPolicy` - the one place that decides what missed / spurious / absent structures score.
* :data:`METRICS`, :class:`MetricSpec`, :func:`metric_spec` - the metric registry.
* :func:`load_labels` - integer label arrays and spacing from NIfTI without float conversion.

Definitions and references are in ``docs/metrics.md``.
"""

from __future__ import annotations

from audit.metrics.case import compute_case_metrics
from audit.metrics.io import load_labels, load_labels_with_affine
from audit.metrics.levels import LEVEL_COLUMNS, compute_level_metrics
from audit.metrics.registry import METRICS, EmptyPolicy, MetricSpec, metric_spec

__all__ = [
    "EmptyPolicy",
    "MetricSpec",
    "METRICS",
    "metric_spec",
    "compute_case_metrics",
    "compute_level_metrics",
    "LEVEL_COLUMNS",
    "load_labels",
    "load_labels_with_affine",
]
