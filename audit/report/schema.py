"""Validation of results.json against its documented schema (docs/report.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.results import RESULTS_SCHEMA_VERSION

__all__ = ["REQUIRED", "validate_results"]

#: Required keys and their JSON types, by dotted path.
REQUIRED: Mapping[str, type | tuple[type, ...]] = {
    "schema_version": str,
    "tool": dict,
    "tool.version": str,
    "run": dict,
    "run.started": str,
    "run.duration_s": (int, float),
    "protocol": dict,
    "protocol_sha256": str,
    "model": dict,
    "model.sha256": str,
    "data": dict,
    "data.manifest_sha256": str,
    "data.n_cases": int,
    "data.n_failed_cases": int,
    "cohort.table1": list,
    "metrics.names": list,
    "metrics.structures": list,
    "metrics.definitions": dict,
    "statistics": dict,
    "statistics.overall": list,
    "statistics.group_estimates": list,
    "statistics.gaps": list,
    "statistics.equivalence": list,
    "statistics.adjusted": list,
    "statistics.acceptance": list,
    "statistics.warnings": list,
    "failures": list,
    "harmonization": dict,
    "harmonization.warnings": list,
    "harmonization.metadata_completeness": list,
    "warnings": list,
}


#: Columns every record of a list-valued section must carry (docs/report.md, "results.json schema").
ROW_FIELDS: Mapping[str, tuple[str, ...]] = {
    "cohort.table1": ("axis", "group", "n_cases", "n_patients", "percent"),
    "statistics.overall": ("axis", "group", "structure", "metric", "n_cases", "n_patients", "n_failed", "mean", "ci_low", "ci_high",
                           "descriptive_only", "is_reference"),
    "statistics.group_estimates": ("axis", "group", "structure", "metric", "n_cases", "n_patients", "n_failed", "n_both_empty", "mean",
                                   "median", "sd", "ci_low", "ci_high", "ci_method", "failure_rate", "mdd", "descriptive_only", "is_reference"),
    "statistics.gaps": ("axis", "comparison", "group", "reference", "structure", "metric", "difference", "diff_ci_low", "diff_ci_high",
                        "test", "p_value", "p_holm", "p_fdr_bh", "p_adjusted", "significant"),
    "statistics.equivalence": ("axis", "group", "reference", "structure", "metric", "margin", "difference", "ci_low", "ci_high", "p_tost",
                               "equivalent"),
    "statistics.adjusted": ("metric", "structure", "model", "term", "estimate", "ci_low", "ci_high", "p_value", "n_obs", "n_groups"),
    "statistics.acceptance": ("id", "description", "metric", "structure", "scope", "group", "estimate", "bound", "operator", "threshold",
                              "value", "status", "reason"),
    "statistics.new_site": ("structure", "metric", "n_sites", "pooled_mean", "ci_low", "ci_high", "tau2", "pi_low", "pi_high", "population"),
    "failures": ("case_id", "site", "stage", "error_type", "error"),
    "harmonization.warnings": ("site", "warning", "n_cases"),
    "harmonization.metadata_completeness": ("site", "column", "known", "unknown"),
}  # fmt: skip
ACCEPTANCE_STATUSES = ("pass", "fail", "inconclusive")
_NUMBER = (int, float)


def _get(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, Mapping) or key not in doc:
            raise KeyError(path)
        doc = doc[key]
    return doc


def validate_results(results: Mapping[str, Any]) -> list[str]:
    """Check results.json against schema version 1.0 (docs/report.md).

    Returns
    -------
    list of str
        The problems found (empty when valid): missing keys, wrong types, unknown schema version, malformed
        sha256 digests, table records lacking contract fields, acceptance statuses outside pass/fail/inconclusive.
    """
    problems = []
    for path, kind in REQUIRED.items():
        try:
            value = _get(results, path)
        except KeyError:
            problems.append(f"results.json: missing {path}")
            continue
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            problems.append(f"results.json: {path} should be {getattr(kind, '__name__', kind)}; found {type(value).__name__}")
    if results.get("schema_version") not in (None, RESULTS_SCHEMA_VERSION):
        problems.append(f"results.json: schema_version {results.get('schema_version')!r} is not {RESULTS_SCHEMA_VERSION!r}")
    for path in ("protocol_sha256", "data.manifest_sha256"):
        try:
            value = _get(results, path)
        except KeyError:
            continue
        if isinstance(value, str) and not _is_sha256(value):
            problems.append(f"results.json: {path} is not a sha256 hex digest (64 hex characters); found {value!r}")
    for path, fields in ROW_FIELDS.items():
        try:
            rows = _get(results, path)
        except KeyError:
            continue
        if not isinstance(rows, list):
            continue
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                problems.append(f"results.json: {path}[{i}] should be an object; found {type(row).__name__}")
                break
            missing = [f for f in fields if f not in row]
            if missing:
                problems.append(f"results.json: {path}[{i}] lacks fields {missing}")
                break  # one message per table is enough
    for i, row in enumerate(_rows_or_empty(results, "statistics.acceptance")):
        if isinstance(row, Mapping) and row.get("status") not in ACCEPTANCE_STATUSES:
            problems.append(f"results.json: statistics.acceptance[{i}].status must be one of {list(ACCEPTANCE_STATUSES)}; found {row.get('status')!r}")
    for i, row in enumerate(_rows_or_empty(results, "statistics.group_estimates")):
        value = row.get("mean") if isinstance(row, Mapping) else None
        if value is not None and not isinstance(value, _NUMBER) and value not in ("inf", "-inf"):
            problems.append(f"results.json: statistics.group_estimates[{i}].mean must be a number, null, 'inf' or '-inf'; found {value!r}")
            break
    return problems


def _rows_or_empty(results: Mapping[str, Any], path: str) -> list[Any]:
    try:
        rows = _get(results, path)
    except KeyError:
        return []
    return rows if isinstance(rows, list) else []


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())
