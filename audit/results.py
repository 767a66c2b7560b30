"""Assembly of results.json (schema version 1.0, documented in docs/report.md).

One function that gathers the protocol, model identity, data provenance, cohort table, metric
definitions, statistics, failures and warnings of a run into one JSON-ready document.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from audit import __version__, provenance
from audit.metrics import metric_spec
from audit.protocol import Protocol, protocol_to_dict
from audit.records import METADATA_COLUMNS, NOT_ASSESSED, CaseFailure, failure_table
from audit.sites import metadata_warning_table

__all__ = ["RESULTS_SCHEMA_VERSION", "results_document"]

RESULTS_SCHEMA_VERSION = "1.0"


def results_document(
    *,
    protocol: Protocol,
    model: Mapping[str, Any],
    manifest: pd.DataFrame,
    metric_table: pd.DataFrame,
    names: Sequence[str],
    results: Any,
    table1: pd.DataFrame,
    failures: Sequence[CaseFailure],
    started: dt.datetime,
    finished: dt.datetime,
    command: str | None,
) -> dict[str, Any]:
    """Assemble results.json (schema in docs/report.md); ``model`` is the run folder's model.json identity."""
    versions = provenance.software_versions()
    deidentified = manifest.drop(columns=["image_path", "label_path", "prediction_path"], errors="ignore")
    synthetic_columns = list(protocol.report.synthetic_columns)
    n_failed_cases = int(metric_table.loc[metric_table["status"] == "failed", "case_id"].nunique())
    warnings = list(results.warnings)
    if n_failed_cases:
        warnings.insert(0, f"{n_failed_cases} case(s) failed and are listed under data quality; they are counted, not dropped")
    if n_failed_cases and n_failed_cases == manifest["case_id"].nunique():
        warnings.insert(0, "every case failed: no metric could be computed, so no estimate exists and every criterion is inconclusive")
    if synthetic_columns:
        warnings.append(f"columns {synthetic_columns} are synthetic (generated), not real patient data")
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "tool": {"name": "spine-audit", "version": __version__, "python": versions["python"], "packages": versions["packages"]},
        "run": {
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "duration_s": round((finished - started).total_seconds(), 3),
            "command": command or " ".join(shlex.quote(a) for a in sys.argv),
            "host_cpu_count": os.cpu_count(),
        },
        "protocol": protocol_to_dict(protocol),
        "protocol_sha256": protocol.sha256,
        "model": {k: model[k] for k in ("name", "kind", "sha256", "labels", "device")},
        "data": {
            "manifest_sha256": provenance.sha256_table(deidentified),
            "n_cases": int(len(manifest)),
            "n_patients": int(manifest["patient_id"].nunique()),
            "n_sites": int(manifest["site"].nunique()),
            "n_failed_cases": n_failed_cases,
            "n_not_assessed": int(metric_table.loc[metric_table["status"] == NOT_ASSESSED, ["case_id", "structure"]].drop_duplicates().shape[0]),
            "synthetic": protocol.synthetic_cohort is not None,
            "synthetic_columns": synthetic_columns,
        },
        "cohort": {"table1": table1},
        "metrics": {
            "names": list(names),
            "structures": list(protocol.structures),
            "definitions": {
                n: {"description": metric_spec(n).description, "higher_is_better": metric_spec(n).higher_is_better, "unit": metric_spec(n).unit}
                for n in names
            },
            "empty_policy": {"missed_distance": protocol.metrics.missed_distance},
            "detection": provenance.detection_counts(metric_table),
            "annotation": provenance.annotation_matrix(metric_table, manifest),
        },
        "statistics": results.to_dict(),
        "failures": failure_table(failures),
        "harmonization": {
            "warnings": metadata_warning_table(manifest),
            "metadata_completeness": provenance.metadata_completeness(manifest, [c for c in METADATA_COLUMNS if c != "field_strength_t"]),
        },
        "warnings": warnings,
    }
