"""Readers that turn one model's per-case metric table into the long metric-table contract.

Layouts:

* ``long``: one row per case, structure and metric (``case_id, structure, metric, value[, status]``);
* ``wide``: one row per case, one column per (structure, metric), named by ``pattern`` or ``columns``;
* ``nnunet_summary``: nnU-Net v2's ``summary.json`` (``nnunetv2.evaluation.evaluate_predictions``):
  ``metric_per_case[i]`` holds ``reference_file`` and ``metrics[<label or region>]`` with ``Dice``,
  ``IoU``, ``TP``, ``FP``, ``FN``, ``TN``, ``n_ref``, ``n_pred``.

Status rules: a finite value is ``ok``; an infinite distance is ``missed`` (no predicted surface); an empty
value follows the table's ``missing_value`` policy (``failed`` by default, never a silent NaN). nnU-Net's
voxel counts give the status exactly: ``n_ref > 0, n_pred == 0`` missed, ``n_ref == 0, n_pred > 0``
false_positive, both 0 both_empty (nnU-Net writes Dice NaN there). Tables carry no voxel spacing, so the
volume columns are NaN. Case ids stay local (the table's own); :func:`audit.tables_input.load_metric_input`
prefixes the site.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.records import METRIC_COLUMNS, STATUSES
from audit.sites.base import pattern_regex
from audit.tables_input.spec import MetricInputError, MetricTableSpec

logger = logging.getLogger(__name__)

__all__ = ["NNUNET_METRICS", "read_any_table", "read_metric_table"]

#: nnU-Net summary.json metric names -> registry names (per-case voxel counts are used for the status).
NNUNET_METRICS: Mapping[str, str] = {"Dice": "dice", "IoU": "iou"}


def read_any_table(path: Path, *, what: str) -> pd.DataFrame:
    """Read CSV (``,``), TSV (``.tsv``/``.tab``) or Parquet, every column as text (CSV/TSV) or as stored."""
    if not path.is_file():
        raise MetricInputError(f"{what}: file {str(path)!r} not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            sep = "\t" if suffix in (".tsv", ".tab") else ","
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:  # parsers raise many types for a corrupt file
        raise MetricInputError(f"{what}: file {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _to_float(value: Any, where: str) -> float:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "na", "n/a", "none", "null")):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MetricInputError(f"{where}: expected a number, inf or an empty cell; found {value!r}") from None


def _status(value: float, missing_value: str) -> str:
    if math.isnan(value):
        return missing_value
    return "missed" if math.isinf(value) else "ok"


def _rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    for col in ("value", "reference_volume_ml", "predicted_volume_ml"):
        out[col] = out[col].astype("float64")
    return out


def _row(case_id: str, structure: str, metric: str, value: float, status: str) -> dict[str, Any]:
    error = "no value in the metric table" if status == "failed" else ""
    return dict(case_id=case_id, structure=structure, metric=metric, value=value, status=status,
                reference_volume_ml=np.nan, predicted_volume_ml=np.nan, error=error)


def _canonical(spec: MetricTableSpec, structure: str, metric: str, where: str, known_metric: Any) -> tuple[str, str]:
    from audit import ontology

    s = spec.structures.get(structure, structure)
    m = spec.metrics.get(metric, metric)
    try:
        ontology.structure(s)
    except KeyError:
        raise MetricInputError(
            f"{where}: structure {structure!r} is not a canonical structure; map it under structures "
            f"(e.g. structures: {{{structure}: vertebral_body}})"
        ) from None
    if not known_metric(m):
        raise MetricInputError(
            f"{where}: metric {metric!r} is neither a registered metric nor declared; map it under metrics "
            f"(e.g. metrics: {{{metric}: dice}}) or declare it under metric_input.declared_metrics with its direction"
        )
    return s, m


def _read_long(spec: MetricTableSpec, table: pd.DataFrame, where: str, known_metric: Any) -> pd.DataFrame:
    col = {k: str(spec.columns.get(k, k)) for k in ("structure", "metric", "value")}
    status_col = spec.columns.get("status", "status" if "status" in table.columns else None)
    for key, name in [("case_id", spec.case_id), *col.items()] + ([("status", status_col)] if status_col else []):
        if name not in table.columns:
            raise MetricInputError(f"{where}.columns.{key}: column {name!r} not in the table; columns are {list(table.columns)}")
    rows = []
    canon: dict[tuple[str, str], tuple[str, str]] = {}
    for i, rec in enumerate(table.to_dict("records")):
        at = f"{where} row {i + 1}"
        key = (str(rec[col["structure"]]), str(rec[col["metric"]]))
        if key not in canon:
            canon[key] = _canonical(spec, *key, at, known_metric)
        value = _to_float(rec[col["value"]], f"{at} column {col['value']!r}")
        status = _status(value, spec.missing_value)
        if status_col:
            given = str(rec[status_col]).strip()
            if given not in STATUSES:
                raise MetricInputError(f"{at} column {status_col!r}: allowed values are {list(STATUSES)}; found {given!r}")
            status = given
        rows.append(_row(str(rec[spec.case_id]).strip(), *canon[key], value, status))
    return _rows_frame(rows)


def _wide_columns(spec: MetricTableSpec, columns: list[str], where: str, known_metric: Any) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for col, target in spec.columns.items():
        if col not in columns:
            raise MetricInputError(f"{where}.columns.{col}: column {col!r} not in the table; columns are {columns}")
        out[col] = _canonical(spec, str(target["structure"]), str(target["metric"]), f"{where}.columns.{col}", known_metric)
    if spec.pattern:
        regex = pattern_regex(spec.pattern)
        for col in columns:
            match = regex.match(col)
            if col in out or col == spec.case_id or match is None:
                continue
            out[col] = _canonical(spec, match.group("structure"), match.group("metric"), f"{where} column {col!r} (pattern {spec.pattern!r})", known_metric)
    if not out:
        raise MetricInputError(f"{where}: no metric column found (pattern {spec.pattern!r}, columns {dict(spec.columns)}); table columns are {columns}")
    return out


def _read_wide(spec: MetricTableSpec, table: pd.DataFrame, where: str, known_metric: Any) -> pd.DataFrame:
    if spec.case_id not in table.columns:
        raise MetricInputError(f"{where}.case_id: column {spec.case_id!r} not in the table; columns are {list(table.columns)}")
    mapping = _wide_columns(spec, list(table.columns), where, known_metric)
    rows = []
    for i, rec in enumerate(table.to_dict("records")):
        case_id = str(rec[spec.case_id]).strip()
        for col, (structure, metric) in mapping.items():
            value = _to_float(rec[col], f"{where} row {i + 1} column {col!r}")
            rows.append(_row(case_id, structure, metric, value, _status(value, spec.missing_value)))
    return _rows_frame(rows)


def _nnunet_case_id(reference_file: str, file_ending: str, where: str) -> str:
    name = Path(str(reference_file)).name
    if not name.endswith(file_ending):
        raise MetricInputError(f"{where}.reference_file: {name!r} does not end with file_ending {file_ending!r}")
    return name[: -len(file_ending)]


def _read_nnunet(spec: MetricTableSpec, where: str, known_metric: Any) -> pd.DataFrame:
    try:
        doc = json.loads(spec.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetricInputError(f"{where}: {str(spec.path)!r} is not a readable JSON file ({type(exc).__name__}: {exc})") from exc
    per_case = doc.get("metric_per_case") if isinstance(doc, Mapping) else None
    if not isinstance(per_case, list):
        raise MetricInputError(f"{where}: {str(spec.path)!r} has no 'metric_per_case' list (is it nnU-Net's summary.json?)")
    if not spec.structures:
        raise MetricInputError(f"{where}.structures: map nnU-Net's label keys to structures, e.g. {{'1': vertebral_body}}")
    names = {raw: spec.metrics.get(raw, NNUNET_METRICS.get(raw)) for raw in ("Dice", "IoU")}
    rows = []
    for i, entry in enumerate(per_case):
        at = f"{where}.metric_per_case[{i}]"
        case_id = _nnunet_case_id(entry.get("reference_file", ""), spec.file_ending, at)
        metrics = entry.get("metrics", {})
        for label, structure in spec.structures.items():
            values = metrics.get(label)
            if not isinstance(values, Mapping):
                raise MetricInputError(f"{at}.metrics: label key {label!r} missing; keys are {sorted(metrics)}")
            n_ref, n_pred = _to_float(values.get("n_ref"), f"{at}.metrics.{label}.n_ref"), _to_float(values.get("n_pred"), f"{at}.metrics.{label}.n_pred")
            status = ("both_empty" if n_pred == 0 else "false_positive") if n_ref == 0 else ("missed" if n_pred == 0 else "ok")
            for raw, metric in names.items():
                if metric is None or raw not in values:
                    continue
                _canonical(spec, structure, metric, f"{at}.metrics.{label}.{raw}", known_metric)
                value = _to_float(values[raw], f"{at}.metrics.{label}.{raw}")
                rows.append(_row(case_id, structure, metric, math.nan if status == "both_empty" else value, status))
    return _rows_frame(rows)


def read_metric_table(spec: MetricTableSpec, *, known_metric: Any, where: str = "metric_input.tables[?]") -> pd.DataFrame:
    """Read one model's table into long metric-table rows with local case ids.

    Parameters
    ----------
    spec : MetricTableSpec
    known_metric : callable
        ``known_metric(name) -> bool``: registered or declared metric names.
    where : str
        Field path for error messages.

    Raises
    ------
    MetricInputError
        For a missing file or column, an unknown structure or metric, a non-numeric value, or a repeated
        (case, structure, metric).
    """
    if spec.layout == "nnunet_summary":
        if not spec.path.is_file():
            raise MetricInputError(f"{where}.path: file {str(spec.path)!r} not found")
        out = _read_nnunet(spec, where, known_metric)
    else:
        table = read_any_table(spec.path, what=f"{where}.path")
        out = (_read_long if spec.layout == "long" else _read_wide)(spec, table, where, known_metric)
    dup = out.duplicated(["case_id", "structure", "metric"])
    if dup.any():
        first = out.loc[dup, ["case_id", "structure", "metric"]].iloc[0].tolist()
        raise MetricInputError(f"{where}: (case, structure, metric) {first} appears more than once in {str(spec.path)!r}")
    return out
