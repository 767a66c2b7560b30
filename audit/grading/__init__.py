"""Stenosis-grading audits: per-level ordinal grades (reference readers and a model) by site and group.

Readers (:mod:`.tables`), metrics as pure functions (:mod:`.metrics`), paired metric and confusion tables
(:mod:`.evaluate`), fairness differences with a patient-cluster bootstrap and criteria (:mod:`.fairness`),
gap tests, multiplicity and TOST (:mod:`.gaps`), reader variability and the readers' ceiling (:mod:`.readers`),
case metadata and RSNA series (:mod:`.cohort`), the synthetic cohort (:mod:`.synthetic`) and the self-contained runner
behind ``spine-audit demo --task grading`` (:mod:`.runner`). Definitions: docs/grading.md.
"""

from __future__ import annotations

from audit.grading.cohort import attach_metadata, missing_series, read_rsna_series
from audit.grading.evaluate import confusion_table, metric_table, pair_grades
from audit.grading.fairness import GradingCriterion, bootstrap_group_rates, evaluate_grading_criteria, fairness_differences, group_rates
from audit.grading.gaps import adjust_grading_gaps, rate_gaps
from audit.grading.readers import agreement_ceiling, agreement_summary, consensus_grades, pairwise_agreement
from audit.grading.tables import DEEPSPINE_SCALE, RSNA_SCALE, GradeScale, read_long_table, read_rsna_submission, read_rsna_train

__all__ = [
    "GradeScale",
    "RSNA_SCALE",
    "DEEPSPINE_SCALE",
    "read_long_table",
    "read_rsna_train",
    "read_rsna_submission",
    "pair_grades",
    "metric_table",
    "confusion_table",
    "group_rates",
    "fairness_differences",
    "bootstrap_group_rates",
    "GradingCriterion",
    "evaluate_grading_criteria",
    "pairwise_agreement",
    "agreement_summary",
    "consensus_grades",
    "agreement_ceiling",
    "rate_gaps",
    "adjust_grading_gaps",
    "attach_metadata",
    "read_rsna_series",
    "missing_series",
]
