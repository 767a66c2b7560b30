"""Audits from per-case metric tables (``input: metrics``): no images, no model run.

Published per-case results (one CSV/Parquet per model, long or wide, or nnU-Net's ``summary.json``) plus a
metadata table become the standard contracts of :mod:`audit.records`: a manifest (no file paths) and one
long metric table per model, so statistics, comparison and the report run unchanged.

Typical use::

    spec = parse_metric_input(protocol.metric_input, base_dir=protocol.base_dir)
    data = load_metric_input(spec, structures=protocol.structures, metrics=names)
    data.manifest, data.tables["nnunet-3d"], data.failures, data.higher_is_better
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from audit.records import (
    MANIFEST_COLUMNS,
    UNKNOWN,
    CaseFailure,
    ManifestRow,
    failed_case_rows,
    validate_manifest,
    validate_metric_table,
)
from audit.tables_input.readers import read_any_table, read_metric_table
from audit.tables_input.spec import (
    LAYOUTS,
    DeclaredMetric,
    MetadataSpec,
    MetricInputError,
    MetricInputSpec,
    MetricTableSpec,
    parse_metric_input,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LAYOUTS",
    "DeclaredMetric",
    "MetadataSpec",
    "MetricInput",
    "MetricInputError",
    "MetricInputSpec",
    "MetricTableSpec",
    "load_metric_input",
    "metadata_manifest",
    "metric_directions",
    "parse_metric_input",
    "read_metric_table",
]


@dataclasses.dataclass(frozen=True)
class MetricInput:
    """What a metric-table audit starts from.

    Attributes
    ----------
    manifest : pandas.DataFrame
        The manifest contract; ``image_path`` and ``label_path`` are empty.
    tables : Mapping[str, pandas.DataFrame]
        One validated long metric table per model (same cases, structures and metrics in each).
    failures : tuple of CaseFailure
        Metadata rows that could not be read.
    missing : Mapping[str, tuple of CaseFailure]
        Per model: the cases its table lacks (``failed`` rows in its table).
    higher_is_better : Mapping[str, bool]
        Direction of every metric (registry or declared).
    """

    manifest: pd.DataFrame
    tables: Mapping[str, pd.DataFrame]
    failures: tuple[CaseFailure, ...]
    missing: Mapping[str, tuple[CaseFailure, ...]]
    higher_is_better: Mapping[str, bool]


def metric_directions(names: Sequence[str], declared: Mapping[str, DeclaredMetric]) -> dict[str, bool]:
    """``higher_is_better`` of each metric: the registry's, else the declared one.

    Raises
    ------
    MetricInputError
        For a metric that is neither registered nor declared.

    Examples
    --------
    >>> metric_directions(["dice", "hd95", "my_score"], {"my_score": DeclaredMetric("my_score", True)})
    {'dice': True, 'hd95': False, 'my_score': True}
    """
    from audit.metrics import metric_spec

    out = {}
    for name in names:
        if name in declared:
            out[name] = declared[name].higher_is_better
            continue
        try:
            out[name] = metric_spec(name).higher_is_better
        except ValueError:
            raise MetricInputError(
                f"metrics.names: {name!r} is not a registered metric; declare it under metric_input.declared_metrics "
                "with higher_is_better: true or false"
            ) from None
    return out


def _harmonized_row(local_id: str, site: str, patient: str, raw: Mapping[str, Any], warnings: list[str]) -> ManifestRow:
    from audit.harmonize.metadata import harmonize_metadata
    from audit.records import METADATA_COLUMNS

    meta = harmonize_metadata(raw, warnings=warnings)
    extra = {
        **{f"{c}_raw": meta[f"{c}_raw"] for c in METADATA_COLUMNS},
        "age_redacted": bool(meta["age_redacted"]),
        "metadata_warnings": "; ".join(warnings),
    }
    return ManifestRow(case_id=f"{site}/{local_id}", site=site, patient_id=patient, image_path="", label_path="",
                       **{c: meta[c] for c in METADATA_COLUMNS}, extra=extra)


def metadata_manifest(spec: MetadataSpec, *, where: str = "metric_input.metadata") -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Build the manifest from the metadata table (vocabulary harmonized as for any site).

    Returns the manifest (``case_id`` = ``<site>/<table id>``, no paths) and the rows that failed (repeated
    ids, unparseable ages, a missing site).
    """
    from audit.harmonize.metadata import MetadataError
    from audit.harmonize.privacy import PrivacyError, pseudonymize
    from audit.sites.base import SiteDataError, raw_metadata, resolve_columns

    table = read_any_table(spec.path, what=f"{where}.path")
    mapping = dict(spec.columns)
    site_col = mapping.pop("site", "site" if "site" in table.columns and spec.site is None else None)
    if site_col is not None and site_col not in table.columns:
        raise MetricInputError(f"{where}.columns.site: column {site_col!r} not in the table; columns are {list(table.columns)}")
    if site_col is None and spec.site is None:
        raise MetricInputError(f"{where}: name the site column (columns.site) or one site for every case (site)")
    try:
        columns = resolve_columns(list(table.columns), mapping, where=where)
    except SiteDataError as exc:
        raise MetricInputError(str(exc)) from None
    if "case_id" not in columns:
        raise MetricInputError(f"{where}.columns.case_id: no case id column; columns are {list(table.columns)}")
    rows: list[dict[str, Any]] = []
    failures: list[CaseFailure] = []
    records = table.to_dict("records")
    ids = [str(r[columns["case_id"]]).strip() for r in records]
    counts = pd.Series(ids).value_counts()
    for local, rec in zip(ids, records):
        site = str(rec[site_col]).strip() if site_col else str(spec.site)
        site = site or UNKNOWN
        case_id = f"{site}/{local}"
        if counts[local] > 1:
            failures.append(CaseFailure(case_id, "adapter", f"case id {local!r} appears {counts[local]} times in the metadata table", "DuplicateCaseId", site))
            continue
        patient = rec.get(columns["patient_id"]) if "patient_id" in columns else None
        patient = str(patient).strip() if patient not in (None, "") else local
        try:
            if spec.pseudonymize:
                patient = pseudonymize(patient, namespace=site)
            rows.append(_harmonized_row(local, site, patient, raw_metadata(rec, columns), []).as_dict())
        except (MetadataError, PrivacyError) as exc:
            failures.append(CaseFailure.from_exception(case_id, "adapter", exc, site=site))
    manifest = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    return manifest, failures


def _full_ids(table: pd.DataFrame, manifest: pd.DataFrame, where: str) -> pd.Series:
    """Map a table's case ids (local or ``site/local``) onto manifest case ids; ``None`` when unknown."""
    full = set(manifest["case_id"])
    local = manifest["case_id"].str.split("/", n=1).str[1]
    by_local = dict(zip(local, manifest["case_id"]))
    ambiguous = set(local[local.duplicated()])
    bad = sorted(set(table["case_id"]) & ambiguous - full)
    if bad:
        raise MetricInputError(f"{where}: case ids {bad[:5]} exist at several sites; write them as '<site>/<id>' in the metric table")
    return table["case_id"].map(lambda c: c if c in full else by_local.get(c))


def load_metric_input(
    spec: MetricInputSpec, *, structures: Sequence[str], metrics: Sequence[str]
) -> MetricInput:
    """Read the metadata and every model's table into the manifest and metric-table contracts.

    Each model's table is completed to every (case, structure, metric) the protocol asks for: a case or
    value the table lacks becomes a ``failed`` row (and a :class:`CaseFailure` per missing case), never a
    silent gap. Values for structures or metrics outside the protocol are not analysed. A table case with
    no metadata row is kept with metadata ``Unknown`` (``metadata_warnings`` says so).
    """
    directions = metric_directions(metrics, spec.declared_metrics)
    known = lambda m: m in spec.declared_metrics or _registered(m)  # noqa: E731
    manifest, failures = metadata_manifest(spec.metadata)
    raw_tables = {t.model: read_metric_table(t, known_metric=known, where=f"metric_input.tables[{i}]") for i, t in enumerate(spec.tables)}
    extra_rows = []
    for i, (model, table) in enumerate(raw_tables.items()):
        mapped = _full_ids(table, manifest, f"metric_input.tables[{i}]")
        failed_ids = {f.case_id for f in failures}
        for local in sorted(set(table.loc[mapped.isna(), "case_id"])):
            site = spec.metadata.site or UNKNOWN
            if f"{site}/{local}" in failed_ids or f"{site}/{local}" in {r["case_id"] for r in extra_rows}:
                continue
            row = _harmonized_row(local, site, local, {}, [f"case {local!r} of model {model!r} has no row in the metadata table"])
            extra_rows.append(row.as_dict())
    if extra_rows:
        manifest = pd.concat([manifest, pd.DataFrame(extra_rows)], ignore_index=True)
    manifest = validate_manifest(manifest.reindex(columns=list(dict.fromkeys([*MANIFEST_COLUMNS, *manifest.columns]))))
    tables, missing = {}, {}
    for i, (model, table) in enumerate(raw_tables.items()):
        mapped = _full_ids(table, manifest, f"metric_input.tables[{i}]")
        table = table.assign(case_id=mapped.fillna((spec.metadata.site or UNKNOWN) + "/" + table["case_id"]))
        tables[model], lost = _complete(table, manifest, structures, metrics, model)
        missing[model] = tuple(lost)
    return MetricInput(manifest, tables, tuple(failures), missing, directions)


def _registered(name: str) -> bool:
    from audit.metrics import metric_spec

    try:
        metric_spec(name)
    except ValueError:
        return False
    return True


def _complete(
    table: pd.DataFrame, manifest: pd.DataFrame, structures: Sequence[str], metrics: Sequence[str], model: str
) -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Keep the protocol's structures and metrics; add failed rows for every missing case or value."""
    keep = table[table["structure"].isin(structures) & table["metric"].isin(metrics)]
    have = set(zip(keep["case_id"], keep["structure"], keep["metric"]))
    present = set(keep["case_id"])
    failures, frames = [], [keep]
    site_of = dict(zip(manifest["case_id"], manifest["site"]))
    for case_id in manifest["case_id"]:
        if case_id not in present:
            error = f"case not in the metric table of model {model!r}"
            failures.append(CaseFailure(case_id, "metrics", error, "MissingMetrics", site_of[case_id]))
            frames.append(failed_case_rows(case_id, structures, metrics, error))
            continue
        missing = [(s, m) for s in structures for m in metrics if (case_id, s, m) not in have]
        for s, m in missing:
            frames.append(failed_case_rows(case_id, [s], [m], f"{s}/{m} not in the metric table of model {model!r}"))
    out = pd.concat(frames, ignore_index=True)
    order = {c: i for i, c in enumerate(manifest["case_id"])}
    out = out.sort_values(["case_id", "structure", "metric"], key=lambda s: s.map(order) if s.name == "case_id" else s, kind="stable")
    return validate_metric_table(out.reset_index(drop=True)), failures
