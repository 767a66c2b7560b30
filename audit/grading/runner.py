"""The self-contained grading audit runner: table in, ``grading_results.json`` and ``grading_report.html`` out.

``spine-audit demo --task grading`` calls :func:`run_grading_demo`. ``spine-audit run`` calls
:func:`run_grading_table` for a protocol file with ``task: grading`` (:mod:`audit.grading.protocol`). The
segmentation pipeline's stages, resume (``--from``/``--until``) and Table 1 are not used by grading runs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import __version__
from audit.fileio import atomic_write_text
from audit.provenance import TABLE1_AXES, cohort_table
from audit.records import DEFAULT_AGE_BAND_EDGES, failure_table
from audit.runfolder import FAILURES, RunFolder
from audit.stats.gaps import EQUIVALENCE_COLUMNS
from audit.stats.groups import INTERSECTION_SEP, add_age_band
from audit.protocol import StatisticsSettings
from audit.grading import metrics as gm
from audit.grading.evaluate import confusion_table, metric_table, pair_grades
from audit.grading.fairness import RATES, GradingCriterion, bootstrap_rate_draws, evaluate_grading_criteria, summarize_rate_draws
from audit.grading.gaps import adjust_grading_gaps, pre_specified_pairs, rate_gaps
from audit.grading.readers import agreement_ceiling, agreement_summary, pairwise_agreement
from audit.grading.synthetic import GradingCohortSpec, make_grading_cohort
from audit.grading.tables import RSNA_SCALE, GradeScale, probability_columns, read_long_table

logger = logging.getLogger(__name__)

__all__ = ["GradingAudit", "GradingRun", "DEMO_CRITERIA", "DEMO_MARGINS", "MULTIPLICITY_METHODS", "GRADING_TABLES", "RESULTS_NAME", "REPORT_NAME",
           "INPUT_NAME", "compute_grading", "run_grading", "run_grading_table", "run_grading_demo"]  # fmt: skip

#: Tables written to ``tables/grading_<name>.csv`` (machine-readable, beside the results document).
GRADING_TABLES: tuple[str, ...] = ("metrics", "confusion", "table1", "gaps", "equivalence", "ceiling")
RESULTS_NAME = "grading_results.json"
REPORT_NAME = "grading_report.html"
INPUT_NAME = "grades.csv"

#: The demo's pre-registered criteria (the issue's example and an equalized-odds bound by sex).
DEMO_CRITERIA: tuple[GradingCriterion, ...] = (
    GradingCriterion(id="severe-sensitivity-by-vendor", description="Lower 95% bound of severe-stenosis sensitivity >= 0.8 for every vendor",
                     estimate="severe_sensitivity", group_by="vendor", bound="ci_low", operator=">=", threshold=0.8),
    GradingCriterion(id="equalized-odds-by-sex", description="Upper 95% bound of the equalized-odds difference (>= moderate) by sex <= 0.1",
                     estimate="equalized_odds_difference", group_by="sex", bound="ci_high", operator="<=", threshold=0.1),
)  # fmt: skip


#: The demo's pre-registered equivalence margins of the rate differences versus the reference group.
DEMO_MARGINS: tuple[tuple[str, float], ...] = (("tpr", 0.1), ("fpr", 0.1), ("severe_sensitivity", 0.15))
#: Multiplicity methods of :func:`audit.stats.gaps.adjust_pvalues`: those of ``statistics.multiplicity`` of segmentation protocols.
MULTIPLICITY_METHODS: tuple[str, ...] = typing.get_args(typing.get_type_hints(StatisticsSettings)["multiplicity"])


@dataclasses.dataclass(frozen=True)
class GradingAudit:
    """What a grading audit computes: the scale, who is the reference, the breakdowns, groups and criteria."""

    scale: GradeScale = RSNA_SCALE
    reference: str = "reader_1"
    model: str = "model"
    breakdowns: tuple[str, ...] = ("level", "condition", "site", "vendor", "sex", "age_band")
    fairness_groups: tuple[str, ...] = ("vendor", "sex")
    criteria: tuple[GradingCriterion, ...] = DEMO_CRITERIA
    n_resamples: int = 2000
    seed: int = 0
    level: float = 0.95
    min_group_size: int = 10
    calibration_bins: int = 10
    alpha: float = 0.05
    age_bands: tuple[float, ...] = DEFAULT_AGE_BAND_EDGES
    multiplicity: str = "holm"  # holm, fdr_bh, bonferroni or none (audit.stats.gaps.adjust_pvalues)
    equivalence_margins: tuple[tuple[str, float], ...] = DEMO_MARGINS  # (rate, margin) pairs, pre-registered
    reference_groups: tuple[tuple[str, str], ...] = ()  # (fairness grouping, reference group); default the largest group

    def __post_init__(self) -> None:
        if self.multiplicity not in MULTIPLICITY_METHODS:
            raise ValueError(f"multiplicity: allowed values are {list(MULTIPLICITY_METHODS)}; found {self.multiplicity!r}")
        unknown = [r for r, _ in self.equivalence_margins if r not in RATES]
        if unknown:
            raise ValueError(f"equivalence_margins: allowed rates are {list(RATES)}; found {unknown}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha: must be in (0, 0.5); found {self.alpha}")


@dataclasses.dataclass(frozen=True)
class GradingRun:
    """Where a grading run wrote its outputs, and the overall criterion statuses."""

    run_dir: Path
    results_path: Path
    report_path: Path
    n_levels: int
    n_failed: int
    acceptance: tuple[tuple[str, str], ...]


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return _clean(table.to_dict(orient="records"))


def _curves(yb: np.ndarray, score: np.ndarray, n_bins: int) -> dict[str, Any]:
    return {"roc": _records(gm.roc_points(yb, score).replace(np.inf, np.nan)), "reliability": _records(gm.reliability_bins(yb, score, n_bins))}


def compute_grading(table: pd.DataFrame, audit: GradingAudit) -> dict[str, Any]:
    """Every number of the grading report from a tidy grading table (see :mod:`audit.grading.tables`)."""
    scale = audit.scale
    if "age_years" in table.columns and "age_band" not in table.columns:
        table = add_age_band(table, audit.age_bands)
    paired, failures = pair_grades(table, scale, reference=audit.reference, model=audit.model)
    cases = paired.drop_duplicates("case_id")
    # confusion matrices per level and fairness group ("L4-L5 x GE"), beside those per breakdown
    crossed_names = [f"level{INTERSECTION_SEP}{g}" for g in audit.fairness_groups if g in paired.columns and "level" in paired.columns]
    crossed = paired.assign(**{n: paired["level"].astype(str) + INTERSECTION_SEP + paired[n.split(INTERSECTION_SEP)[1]].astype(str) for n in crossed_names})
    table1 = cohort_table(cases, [a for a in TABLE1_AXES if a in cases.columns])
    breakdowns = [b for b in audit.breakdowns if b in paired.columns]
    rates, differences, gaps, equivalence = {}, {}, [], []
    pre_specified = pre_specified_pairs(audit.criteria)
    absent = [g for g in audit.fairness_groups if g not in paired.columns]
    if absent:
        logger.warning("fairness groups %s are not columns of the graded table; criteria on them are inconclusive", absent)
    for group in (g for g in audit.fairness_groups if g in paired.columns):
        draws = bootstrap_rate_draws(paired, group, positive_from=scale.positive_from, severe=scale.severe, n_resamples=audit.n_resamples, seed=audit.seed)
        rates[group], differences[group] = summarize_rate_draws(draws, audit.level)
        gap, eq = rate_gaps(draws, level=audit.level, alpha=audit.alpha, min_group_size=audit.min_group_size,
                            margins=dict(audit.equivalence_margins), reference=dict(audit.reference_groups).get(group), pre_specified=pre_specified)  # fmt: skip
        gaps.append(gap)
        equivalence.append(eq)
    crit_rows, status = evaluate_grading_criteria(list(audit.criteria), rates, differences, min_group_size=audit.min_group_size)
    pairs = pairwise_agreement(table, n_grades=scale.n_grades, model=audit.model)
    probs = probability_columns(scale)
    curves: dict[str, Any] = {}
    rsna: dict[str, Any] = {}
    if all(c in paired.columns for c in probs):
        yb = (paired["grade_ref"].to_numpy() >= scale.positive_from).astype(int)
        score = gm.positive_score(paired[probs].to_numpy(dtype=np.float64), scale.positive_from)
        curves = _curves(yb, score, audit.calibration_bins)
        curves["by_group"] = {
            g: {str(v): _curves(yb[idx], score[idx], audit.calibration_bins) for v, idx in paired.groupby(paired[g].astype(str)).indices.items()}
            for g in audit.fairness_groups if g in paired.columns
        }
        if scale.n_grades == len(gm.RSNA_WEIGHTS):
            per_condition = {c: gm.weighted_log_loss(sub["grade_ref"].to_numpy(), sub[probs].to_numpy(dtype=np.float64)) for c, sub in paired.groupby("condition")}
            spinal = paired[paired["condition"] == "spinal_canal_stenosis"]
            rsna = {"per_condition": per_condition, "any_severe_spinal": gm.any_severe_log_loss(spinal, severe=scale.severe) if len(spinal) else float("nan")}
    return {
        "paired": paired, "failures": failures, "metrics": metric_table(paired, scale, breakdowns),
        "confusion": confusion_table(crossed, scale, [*breakdowns, *crossed_names]),
        "rates": rates, "differences": differences, "criteria": crit_rows, "criteria_status": status, "agreement": pairs,
        "agreement_summary": agreement_summary(pairs), "curves": curves, "rsna": rsna,
        "table1": table1, "gaps": adjust_grading_gaps(gaps, method=audit.multiplicity, alpha=audit.alpha),
        "equivalence": pd.concat([e for e in equivalence if len(e)], ignore_index=True) if any(len(e) for e in equivalence) else pd.DataFrame(columns=list(EQUIVALENCE_COLUMNS)),
        "ceiling": agreement_ceiling(table, n_grades=scale.n_grades, model=audit.model, n_resamples=audit.n_resamples, seed=audit.seed, level=audit.level),
    }  # fmt: skip


def results_json(computed: dict[str, Any], audit: GradingAudit, input_failures: list) -> dict[str, Any]:
    """The results document: every estimate, interval, test input and criterion, without case identifiers."""
    failures = [*input_failures, *computed["failures"]]
    paired = computed["paired"]
    return _clean({
        "task": "grading", "software_version": __version__,
        "scale": {"labels": list(audit.scale.labels), "positive_from": audit.scale.positive_from, "severe": audit.scale.severe},
        "reference": audit.reference, "model": audit.model,
        "counts": {"n_patients": int(paired["patient_id"].nunique()), "n_cases": int(paired["case_id"].nunique()), "n_levels": int(len(paired))},
        "failures": {"count": len(failures), "by_type": dict(collections.Counter(f.error_type for f in failures)), "by_site": dict(collections.Counter(f.site for f in failures))},
        "bootstrap": {"n_resamples": audit.n_resamples, "seed": audit.seed, "level": audit.level, "cluster": "patient_id", "interval": "percentile",
                      "strata": "the fairness group when it is constant within patients"},
        "table1": _records(computed["table1"]), "age_bands": list(audit.age_bands),
        "metrics": _records(computed["metrics"]), "confusion": _records(computed["confusion"]),
        "fairness": {g: {"rates": _records(computed["rates"][g]), "differences": _records(computed["differences"][g])} for g in computed["rates"]},
        "agreement": {"pairs": _records(computed["agreement"]), "summary": computed["agreement_summary"], "ceiling": _records(computed["ceiling"]),
                      "consensus": "median of the readers' grades (lower middle grade for an even number of readers)"},
        "gaps": {"rows": _records(computed["gaps"]), "test": "two-sided Wald z on the patient-cluster bootstrap SE of the difference versus the reference group",
                 "multiplicity": audit.multiplicity, "alpha": audit.alpha, "families": "criteria-named (grouping, rate) pairs pre-specified, the rest exploratory"},
        "equivalence": {"rows": _records(computed["equivalence"]), "margins": dict(audit.equivalence_margins),
                        "rule": f"{round(100 * (1 - 2 * audit.alpha))}% percentile interval inside (-margin, margin); p_tost: z-TOST on the bootstrap SE"},
        "curves": computed["curves"], "rsna": computed["rsna"],
        "criteria": {"rows": _records(computed["criteria"]), "status": computed["criteria_status"]},
    })  # fmt: skip


def run_grading(source: Path | pd.DataFrame, run_dir: Path, audit: GradingAudit = GradingAudit()) -> GradingRun:
    """Read a plain long grading table, compute everything, write the results JSON and the HTML report."""
    table, input_failures = read_long_table(source, scale=audit.scale)
    return run_grading_table(table, input_failures, run_dir, audit)


def run_grading_table(table: pd.DataFrame, input_failures: list, run_dir: Path, audit: GradingAudit, series: dict[str, Any] | None = None) -> GradingRun:
    """Compute everything from a tidy grading table and its read failures; write the results JSON and the report.

    ``series`` is the RSNA series summary of :func:`audit.grading.cohort.series_summary` (saved as it is).
    """
    from audit.grading.report import render_grading_report

    computed = compute_grading(table, audit)
    doc = results_json(computed, audit, input_failures)
    doc["series"] = _clean(series or {})
    html = render_grading_report(doc)
    folder = RunFolder(run_dir)
    with folder.lock():  # one writer per folder; every file written atomically
        results_path = atomic_write_text(folder.path(RESULTS_NAME), json.dumps(doc, indent=1, allow_nan=False))
        report_path = atomic_write_text(folder.path(REPORT_NAME), html)
        folder.write_csv(FAILURES, failure_table([*input_failures, *computed["failures"]]))
        folder.write_tables({f"grading_{name}": computed[name] for name in GRADING_TABLES})
    logger.info("grading results in %s", results_path)
    return GradingRun(run_dir=run_dir, results_path=results_path, report_path=report_path, n_levels=doc["counts"]["n_levels"],
                      n_failed=doc["failures"]["count"], acceptance=tuple(computed["criteria_status"].items()))  # fmt: skip


def run_grading_demo(run_dir: Path, *, n_patients: int | None = None, seed: int | None = None, n_resamples: int = 2000) -> GradingRun:
    """Generate the synthetic grading cohort, write it as the input table ``grades.csv``, and audit it."""
    spec = GradingCohortSpec()
    spec = dataclasses.replace(spec, n_patients=n_patients or spec.n_patients, seed=spec.seed if seed is None else seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / INPUT_NAME, make_grading_cohort(spec).to_csv(index=False))
    return run_grading(run_dir / INPUT_NAME, run_dir, GradingAudit(n_resamples=n_resamples))
