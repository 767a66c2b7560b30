"""The statistics layer: subgroup estimates with cluster-bootstrap intervals, gaps and tests with
multiplicity control (site-level axes at the site level, simultaneous largest-gap intervals), adjusted mixed
models with identifiability checks, new-site meta-analysis, equivalence, power, paired comparisons and
acceptance (failed cases counted by the pre-registered failure policy)."""

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
    clopper_pearson_interval,
    minimum_detectable_difference,
    proportion_interval,
    welch_tost,
    wilson_interval,
)
from audit.stats.maxt import largest_gap, max_t_pairwise
from audit.stats.meta import new_site_table, random_effects, reml_tau2
from audit.stats.sitelevel import site_level_columns

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
    "largest_gap",
    "max_t_pairwise",
    "random_effects",
    "reml_tau2",
    "new_site_table",
    "site_level_columns",
]
