"""The first stage of an ``input: metrics`` audit: metric tables and metadata into the run folder.

It writes what the sites .. metrics stages write for an image audit (manifest without paths, the audited
model's metric table, its failures, ``model.json``), so statistics and the report run unchanged. Every
model's completed table goes to ``metric-tables/<model>.csv``, and with two or more models the paired
comparison of each against the first (:func:`audit.stats.compare_models`) to ``metric-tables/comparison.csv``.
"""

from __future__ import annotations

import logging
from typing import Any

from audit.tables_input import load_metric_input, parse_metric_input

logger = logging.getLogger(__name__)

__all__ = ["METRIC_TABLES_DIR", "audited_model", "stage_metric_tables"]

#: Run-folder subfolder with every input model's completed metric table and the model comparison.
METRIC_TABLES_DIR = "metric-tables"


def audited_model(protocol: Any) -> str:
    """The model an ``input: metrics`` protocol audits: ``model.name``, else the first table's model."""
    spec = parse_metric_input(protocol.metric_input, base_dir=protocol.base_dir)
    return str(protocol.model.get("name", spec.tables[0].model))


def stage_metric_tables(protocol: Any, folder: Any) -> dict[str, str]:
    """Read the protocol's metric tables into ``folder`` (a :class:`~audit.runfolder.RunFolder`).

    Returns the audited model's name.
    """
    from audit.evaluate import metric_names
    from audit.provenance import sha256_file

    spec = parse_metric_input(protocol.metric_input, base_dir=protocol.base_dir)
    names = metric_names(protocol.metrics.names, protocol.metrics.nsd_tolerances_mm)
    data = load_metric_input(spec, structures=protocol.structures, metrics=names)
    audited = audited_model(protocol)
    source = next(t for t in spec.tables if t.model == audited)
    folder.write_manifest(data.manifest)
    folder.write_model({"name": audited, "kind": "metric_table", "sha256": sha256_file(source.path), "labels": {}, "device": "none"})
    folder.write_metrics(data.tables[audited])
    folder.write_failures("sites", [*data.failures, *data.missing[audited]])
    for model, table in data.tables.items():
        folder.write_csv(f"{METRIC_TABLES_DIR}/{model}.csv", table)
    if len(data.tables) > 1:
        from audit.stats import compare_models

        patients = data.manifest[["case_id", "patient_id"]]
        tables = {model: table.merge(patients, on="case_id", how="left") for model, table in data.tables.items()}
        comparison = compare_models(tables, structures=protocol.structures, metrics=list(names), statistics=protocol.statistics)
        folder.write_csv(f"{METRIC_TABLES_DIR}/comparison.csv", comparison)
    logger.info("metric tables: %d cases, models %s (audited: %s)", len(data.manifest), list(data.tables), audited)
    return {"model": audited}
