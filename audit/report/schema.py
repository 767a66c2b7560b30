"""Validation of results.json against its documented schema (docs/report.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.results import RESULTS_SCHEMA_VERSION

__all__ = ["validate_results", "REQUIRED"]

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
    "warnings": list,
}


def _get(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, Mapping) or key not in doc:
            raise KeyError(path)
        doc = doc[key]
    return doc


def validate_results(results: Mapping[str, Any]) -> list[str]:
    """Return the problems found (empty when valid): missing keys, wrong types, unknown schema version."""
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
    for key in ("protocol_sha256",):
        value = results.get(key)
        if isinstance(value, str) and len(value) != 64:
            problems.append(f"results.json: {key} is not a sha256 hex digest")
    return problems
