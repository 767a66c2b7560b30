"""The protocol's ``metric_input`` section (used with ``input: metrics``), validated into frozen dataclasses.

Example (CSpineSeg-style published results: one wide CSV per model, plus the clinical table)::

    input: metrics
    metric_input:
      metadata:
        path: clinical.tsv
        columns: {case_id: case, patient_id: patient, site: site_id, age: age_at_index, sex: sex, race: race}
      tables:
        - model: nnunet-2d
          path: per_case/2d.csv
          layout: wide                       # long | wide | nnunet_summary
          case_id: case
          pattern: "{metric}_{structure}"    # or columns: {dice_vb: {structure: vertebral_body, metric: dice}}
          structures: {vb: vertebral_body, disc: intervertebral_disc}
          metrics: {dsc: dice, hd95: hd95, nsd: nsd_2mm}
        - model: nnunet-3d
          path: 3d_fullres/summary.json      # nnU-Net's evaluation output (metric_per_case)
          layout: nnunet_summary
          structures: {"1": vertebral_body, "2": intervertebral_disc}
      declared_metrics:
        my_score: {higher_is_better: true}   # a metric outside the registry, with its direction
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from audit.errors import UserError
__all__ = [
    "LAYOUTS",
    "MISSING_VALUE_POLICIES",
    "MetricInputError",
    "MetadataSpec",
    "MetricTableSpec",
    "DeclaredMetric",
    "MetricInputSpec",
    "parse_metric_input",
]

LAYOUTS: tuple[str, ...] = ("long", "wide", "nnunet_summary")
#: What a table's empty (NaN) value becomes: a failed case-structure (default) or ``both_empty``.
MISSING_VALUE_POLICIES: tuple[str, ...] = ("failed", "both_empty")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class MetricInputError(UserError, ValueError):
    """A ``metric_input`` section or table that does not follow the schema; the message names the field."""


@dataclasses.dataclass(frozen=True)
class MetadataSpec:
    """The metadata table: one row per case (``columns`` maps canonical keys to table columns)."""

    path: Path
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    site: str | None = None
    pseudonymize: bool = False


@dataclasses.dataclass(frozen=True)
class MetricTableSpec:
    """One model's per-case metric table."""

    model: str
    path: Path
    layout: str = "long"
    case_id: str = "case_id"
    columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pattern: str | None = None
    structures: Mapping[str, str] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, str] = dataclasses.field(default_factory=dict)
    missing_value: str = "failed"
    file_ending: str = ".nii.gz"


@dataclasses.dataclass(frozen=True)
class DeclaredMetric:
    """A metric outside :data:`audit.metrics.METRICS`, declared with its direction."""

    name: str
    higher_is_better: bool
    unit: str = "1"
    description: str = ""


@dataclasses.dataclass(frozen=True)
class MetricInputSpec:
    """The whole ``metric_input`` section."""

    metadata: MetadataSpec
    tables: tuple[MetricTableSpec, ...]
    declared_metrics: Mapping[str, DeclaredMetric] = dataclasses.field(default_factory=dict)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise MetricInputError(f"{where}: expected a mapping; found {value!r}")
    return {str(k): v for k, v in value.items()}


def _keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise MetricInputError(f"{where}.{unknown[0]}: unknown key; allowed keys are {sorted(allowed)}")


def _str_map(value: Any, where: str) -> Mapping[str, str]:
    data = _mapping(value, where)
    for k, v in data.items():
        if not isinstance(v, str):
            raise MetricInputError(f"{where}.{k}: expected a string; found {v!r}")
    return MappingProxyType(data)


def _path(value: Any, where: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise MetricInputError(f"{where}: expected a file path; found {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def _parse_table(data: Any, where: str, base_dir: Path) -> MetricTableSpec:
    from audit import ontology

    d = _mapping(data, where)
    _keys(d, tuple(f.name for f in dataclasses.fields(MetricTableSpec)), where)
    for key in ("model", "path"):
        if key not in d:
            raise MetricInputError(f"{where}.{key}: required key is missing")
    model = d["model"]
    if not isinstance(model, str) or not _MODEL_NAME.match(model):
        raise MetricInputError(f"{where}.model: expected a name of letters, digits, '.', '_' or '-' (at most 64); found {model!r}")
    path = _path(d["path"], f"{where}.path", base_dir)
    layout = d.get("layout", "nnunet_summary" if path.suffix.lower() == ".json" else "long")
    if layout not in LAYOUTS:
        raise MetricInputError(f"{where}.layout: allowed values are {list(LAYOUTS)}; found {layout!r}")
    missing = d.get("missing_value", "failed")
    if missing not in MISSING_VALUE_POLICIES:
        raise MetricInputError(f"{where}.missing_value: allowed values are {list(MISSING_VALUE_POLICIES)}; found {missing!r}")
    structures = _str_map(d.get("structures", {}), f"{where}.structures")
    for raw, name in structures.items():
        try:
            ontology.structure(name)
        except KeyError as exc:
            raise MetricInputError(f"{where}.structures.{raw}: {exc.args[0]}") from None
    columns = _mapping(d.get("columns", {}), f"{where}.columns")
    if layout == "long":
        _keys(columns, ("structure", "metric", "value", "status"), f"{where}.columns")
    elif layout == "wide":
        for col, target in columns.items():
            t = _mapping(target, f"{where}.columns.{col}")
            _keys(t, ("structure", "metric"), f"{where}.columns.{col}")
            if set(t) != {"structure", "metric"}:
                raise MetricInputError(f"{where}.columns.{col}: needs both 'structure' and 'metric'; found {t}")
        if not columns and not d.get("pattern"):
            raise MetricInputError(f"{where}: a wide table needs 'pattern' (e.g. '{{metric}}_{{structure}}') or 'columns'")
    pattern = d.get("pattern")
    if pattern is not None and (not isinstance(pattern, str) or "{metric}" not in pattern or "{structure}" not in pattern):
        raise MetricInputError(f"{where}.pattern: must contain {{metric}} and {{structure}}; found {pattern!r}")
    case_col = d.get("case_id", "case_id")
    if not isinstance(case_col, str):
        raise MetricInputError(f"{where}.case_id: expected a column name; found {case_col!r}")
    return MetricTableSpec(
        model=model,
        path=path,
        layout=layout,
        case_id=case_col,
        columns=MappingProxyType(columns),
        pattern=pattern,
        structures=structures,
        metrics=_str_map(d.get("metrics", {}), f"{where}.metrics"),
        missing_value=missing,
        file_ending=str(d.get("file_ending", ".nii.gz")),
    )


def _parse_declared(data: Any, where: str) -> Mapping[str, DeclaredMetric]:
    from audit.metrics import metric_spec

    out = {}
    for name, value in _mapping(data, where).items():
        d = _mapping(value, f"{where}.{name}")
        _keys(d, ("higher_is_better", "unit", "description"), f"{where}.{name}")
        if not isinstance(d.get("higher_is_better"), bool):
            raise MetricInputError(f"{where}.{name}.higher_is_better: required, true or false; found {d.get('higher_is_better')!r}")
        try:
            metric_spec(name)
        except ValueError:
            pass
        else:
            raise MetricInputError(f"{where}.{name}: {name!r} is a registered metric; its direction is fixed, do not declare it")
        out[name] = DeclaredMetric(name, d["higher_is_better"], str(d.get("unit", "1")), str(d.get("description", "")))
    return MappingProxyType(out)


def parse_metric_input(data: Any, *, base_dir: str | Path = ".", where: str = "metric_input") -> MetricInputSpec:
    """Validate the ``metric_input`` section; relative paths resolve against ``base_dir``.

    Raises
    ------
    MetricInputError
        Naming the field path, the allowed values and the value found.

    Examples
    --------
    >>> spec = parse_metric_input({"metadata": {"path": "meta.csv", "site": "duke"},
    ...                            "tables": [{"model": "a", "path": "a.csv"}]}, base_dir="/data")
    >>> spec.tables[0].layout, str(spec.tables[0].path), spec.metadata.site
    ('long', '/data/a.csv', 'duke')
    """
    base = Path(base_dir)
    d = _mapping(data, where)
    _keys(d, ("metadata", "tables", "declared_metrics"), where)
    if "metadata" not in d:
        raise MetricInputError(f"{where}.metadata: required key is missing (the per-case metadata table)")
    meta = _mapping(d["metadata"], f"{where}.metadata")
    _keys(meta, ("path", "columns", "site", "pseudonymize"), f"{where}.metadata")
    if "path" not in meta:
        raise MetricInputError(f"{where}.metadata.path: required key is missing")
    if not isinstance(meta.get("pseudonymize", False), bool):
        raise MetricInputError(f"{where}.metadata.pseudonymize: expected true or false; found {meta['pseudonymize']!r}")
    site = meta.get("site")
    if site is not None and not isinstance(site, str):
        raise MetricInputError(f"{where}.metadata.site: expected a site name; found {site!r}")
    metadata = MetadataSpec(
        _path(meta["path"], f"{where}.metadata.path", base),
        _str_map(meta.get("columns", {}), f"{where}.metadata.columns"),
        site,
        bool(meta.get("pseudonymize", False)),
    )
    tables_raw = d.get("tables")
    if not isinstance(tables_raw, list) or not tables_raw:
        raise MetricInputError(f"{where}.tables: expected a non-empty list of metric tables; found {tables_raw!r}")
    tables = tuple(_parse_table(t, f"{where}.tables[{i}]", base) for i, t in enumerate(tables_raw))
    names = [t.model for t in tables]
    if len(set(names)) != len(names):
        raise MetricInputError(f"{where}.tables: model names must be unique; found {names}")
    declared = _parse_declared(d.get("declared_metrics", {}), f"{where}.declared_metrics")
    return MetricInputSpec(metadata, tables, declared)
