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

from audit import __version__, provenance, study
from audit.metrics import metric_spec
from audit.protocol import Protocol, protocol_to_dict
from audit.records import METADATA_COLUMNS, NOT_ASSESSED, CaseFailure, failure_table
from audit.sites import metadata_warning_table

__all__ = ["EXCLUDED_STAGES", "RESULTS_SCHEMA_VERSION", "participant_flow", "results_document", "study_section"]

RESULTS_SCHEMA_VERSION = "1.0"

#: Failure stages at which a case is *excluded* (its input data did not meet the requirements); failures at any
#: other stage (inference, metrics) are *failed* cases: data about the model and the pipeline.
EXCLUDED_STAGES = ("adapter", "harmonize")


def participant_flow(manifest: pd.DataFrame, metric_table: pd.DataFrame, failures: Sequence[CaseFailure]) -> list[dict[str, Any]]:
    """Cases found, excluded, failed and analysed per site, then a row ``site: "all"``.

    A case is *found* when it has a manifest row (cases that failed before they had one get a row with Unknown
    metadata, so they are found too), *excluded* when its first failure is at a stage of
    :data:`EXCLUDED_STAGES`, *failed* when it failed at a later stage, and *analysed* otherwise (it has metric
    rows that neither failed nor were not assessed). ``found = excluded + failed + analysed`` in every row.

    Examples
    --------
    >>> from audit.records import CaseFailure
    >>> m = pd.DataFrame({"case_id": ["a/1", "a/2", "a/3"], "site": ["a", "a", "a"]})
    >>> t = pd.DataFrame({"case_id": ["a/1", "a/2", "a/3"], "status": ["ok", "failed", "failed"]})
    >>> f = [CaseFailure("a/2", "adapter", "x", "E", "a"), CaseFailure("a/3", "inference", "y", "E", "a")]
    >>> participant_flow(m, t, f)[0]
    {'site': 'a', 'found': 3, 'excluded': 1, 'failed': 1, 'analysed': 1}
    """
    first_stage: dict[str, str] = {}
    for f in failures:
        first_stage.setdefault(f.case_id, f.stage)
    analysed_ids = set(metric_table.loc[~metric_table["status"].isin(["failed", NOT_ASSESSED]), "case_id"])
    cases = manifest.drop_duplicates("case_id")[["case_id", "site"]].copy()
    cases["state"] = [
        "analysed" if cid in analysed_ids else ("excluded" if first_stage.get(cid) in EXCLUDED_STAGES else "failed") for cid in cases["case_id"]
    ]
    rows = []
    for site, sub in [*sorted(cases.groupby(cases["site"].astype(str)), key=lambda t: t[0]), ("all", cases)]:
        counts = sub["state"].value_counts()
        rows.append({"site": site, "found": len(sub), **{k: int(counts.get(k, 0)) for k in ("excluded", "failed", "analysed")}})
    return rows


def study_section(protocol: Protocol, manifest: pd.DataFrame) -> dict[str, Any]:
    """Study context for results.json: the protocol's ``study`` settings, the model card and the training overlap."""
    card = study.model_card(protocol.model)
    return {
        "description": protocol.description.strip(),
        "intended_use": protocol.study.intended_use.strip() or None,
        "reference_standard": protocol.study.reference_standard.strip() or None,
        "registered": protocol.study.registered or None,
        "registry": protocol.study.registry.strip() or None,
        "model_card": card,
        "overlap": study.training_overlap(card, manifest),
    }


def _definition(name: str, protocol: Protocol) -> dict[str, Any]:
    """A metric's definition: the registry's, or the one an ``input: metrics`` protocol declares."""
    try:
        spec = metric_spec(name)
    except ValueError:
        from audit.tables_input import parse_metric_input

        declared = parse_metric_input(protocol.metric_input, base_dir=protocol.base_dir).declared_metrics[name]
        return {"description": declared.description or "declared in the protocol", "higher_is_better": declared.higher_is_better, "unit": declared.unit}
    return {"description": spec.description, "higher_is_better": spec.higher_is_better, "unit": spec.unit}


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
    image_warnings: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Assemble results.json (schema in docs/report.md); ``model`` is the run folder's model.json identity.

    ``image_warnings`` (case_id, site, warning) are the checks stage's per-case warnings; each joins
    ``harmonization.warnings`` as one row naming its case, after the metadata warnings.
    """
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
            "n_cases": len(manifest),
            "n_patients": int(manifest["patient_id"].nunique()),
            "n_sites": int(manifest["site"].nunique()),
            "n_failed_cases": n_failed_cases,
            "n_not_assessed": int(metric_table.loc[metric_table["status"] == NOT_ASSESSED, ["case_id", "structure"]].drop_duplicates().shape[0]),
            "synthetic": protocol.synthetic_cohort is not None,
            "synthetic_columns": synthetic_columns,
        },
        "study": study_section(protocol, manifest),
        "cohort": {"table1": table1, "flow": participant_flow(manifest, metric_table, failures)},
        "metrics": {
            "names": list(names),
            "structures": list(protocol.structures),
            "definitions": {n: _definition(n, protocol) for n in names},
            "empty_policy": {"missed_distance": protocol.metrics.missed_distance},
            "detection": provenance.detection_counts(metric_table),
            "annotation": provenance.annotation_matrix(metric_table, manifest),
        },
        "statistics": results.to_dict(),
        "failures": failure_table(failures),
        "harmonization": {
            "warnings": _harmonization_warnings(metadata_warning_table(manifest), image_warnings),
            "metadata_completeness": provenance.metadata_completeness(manifest, [c for c in METADATA_COLUMNS if c != "field_strength_t"]),
        },
        "warnings": warnings,
    }


def _harmonization_warnings(metadata: pd.DataFrame, images: pd.DataFrame | None) -> pd.DataFrame:
    """Metadata warnings (site, warning, n_cases), then one row per per-case image warning: ``case <id>: <warning>``."""
    if images is None or images.empty:
        return metadata
    rows = pd.DataFrame({"site": images["site"], "warning": "case " + images["case_id"] + ": " + images["warning"], "n_cases": 1})
    return pd.concat([metadata, rows], ignore_index=True) if len(metadata) else rows.reset_index(drop=True)
