"""The statistics layer: subgroup estimates with cluster-bootstrap intervals, gaps and tests with
multiplicity control, adjusted mixed models, equivalence, power, paired comparisons and acceptance."""

from __future__ import annotations

from audit.stats.acceptance import criterion_status, evaluate_acceptance
from audit.stats.adjusted import adjusted_effects, confounding_warnings
from audit.stats.analyze import StatsResults, analyze
from audit.stats.bootstrap import (
    bca_interval,
    cluster_bootstrap_means,
    jackknife_means,
    patient_weights,
    percentile_interval,
)
from audit.stats.compare import compare_models, compare_references, paired_differences
from audit.stats.gaps import adjust_pvalues
from audit.stats.groups import add_age_band, age_band_labels
from audit.stats.intervals import (
    minimum_detectable_difference,
    welch_tost,
    wilson_interval,
)

__all__ = [
    "StatsResults",
    "analyze",
    "add_age_band",
    "age_band_labels",
    "patient_weights",
    "cluster_bootstrap_means",
    "jackknife_means",
    "percentile_interval",
    "bca_interval",
    "wilson_interval",
    "clopper_pearson_interval",
    "proportion_interval",
    "welch_tost",
    "minimum_detectable_difference",
    "adjust_pvalues",
    "adjusted_effects",
    "confounding_warnings",
    "evaluate_acceptance",
    "criterion_status",
    "compare_models",
    "compare_references",
    "paired_differences",
]
