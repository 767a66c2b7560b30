"""The grading protocol: a YAML file with ``task: grading`` that ``spine-audit run`` hands to the grading runner.

A separate, small schema (not a section of :mod:`audit.protocol`): unknown keys are errors naming the key and the
allowed ones; input paths are relative to the protocol file. Example (``protocols/grading-example.yaml``)::

    task: grading
    name: stenosis grading, external sites
    input: {format: long, table: grades.csv}      # or {format: rsna, table: train.csv, predictions: submission.csv,
                                                  #     series: train_series_descriptions.csv}
                                                  # optional metadata: meta.csv or {path, columns, site, pseudonymize}
    scale: rsna                                   # or deepspine
    reference: reader_1
    model: model
    breakdowns: [level, condition, site, vendor, sex]
    fairness_groups: [vendor, sex]
    bootstrap: {n_resamples: 2000, seed: 0, level: 0.95}
    min_group_size: 10
    alpha: 0.05                                   # gap tests and TOST (1 - 2 alpha interval)
    multiplicity: holm                            # or fdr_bh, bonferroni, none (Holm and BH columns are always reported)
    equivalence_margins: {tpr: 0.1, fpr: 0.1}     # pre-registered TOST margins per rate (none: no TOST)
    reference_groups: {vendor: GE}                # reference of the gap tests (default: the largest group)
    criteria:
      - {id: severe-sens, description: ..., estimate: severe_sensitivity, group_by: vendor, bound: ci_low, operator: ">=", threshold: 0.8}
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import ProtocolError
from audit.grading.cohort import attach_metadata, missing_series, read_rsna_series, series_summary
from audit.grading.fairness import RATES, GradingCriterion
from audit.grading.runner import GradingAudit
from audit.grading.tables import DEEPSPINE_SCALE, RSNA_SCALE, read_long_table, read_rsna_submission, read_rsna_train
from audit.tables_input.spec import MetadataSpec
from audit.yamlio import load_yaml

logger = logging.getLogger(__name__)

__all__ = ["GradingProtocol", "is_grading_protocol", "load_grading_protocol", "read_grading_input"]

SCALES = {"rsna": RSNA_SCALE, "deepspine": DEEPSPINE_SCALE}
_KEYS = {"task", "name", "input", "scale", "reference", "model", "breakdowns", "fairness_groups", "bootstrap", "min_group_size", "criteria",
         "alpha", "multiplicity", "equivalence_margins", "age_bands", "reference_groups"}
_INPUT_KEYS = {"format", "table", "predictions", "series", "metadata"}
_METADATA_KEYS = {"path", "columns", "site", "pseudonymize"}
_BOOTSTRAP_KEYS = {"n_resamples", "seed", "level"}
MAX_BYTES = 1_000_000


@dataclasses.dataclass(frozen=True)
class GradingProtocol:
    """A validated grading protocol: the name, the input files and the :class:`GradingAudit` settings."""

    name: str
    input_format: str
    table: Path
    predictions: Path | None
    audit: GradingAudit
    series: Path | None = None
    metadata: MetadataSpec | None = None


def _read(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ProtocolError(f"protocol file {str(path)!r} is larger than {MAX_BYTES:,} bytes")
        return load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"protocol file {str(path)!r} cannot be read: {exc}") from None


def is_grading_protocol(path: str | Path) -> bool:
    """True when the file is a YAML mapping with ``task: grading`` (anything else goes to :mod:`audit.protocol`)."""
    try:
        data = _read(Path(path))
    except Exception:  # the segmentation loader reports unreadable files with its own message
        return False
    return isinstance(data, Mapping) and data.get("task") == "grading"


def _unknown(section: str, data: Mapping, allowed: set[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ProtocolError(f"{section}: unknown keys {extra}; allowed {sorted(allowed)}")


def load_grading_protocol(path: str | Path) -> GradingProtocol:
    """Read and validate a ``task: grading`` protocol file."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, Mapping) or data.get("task") != "grading":
        raise ProtocolError(f"protocol file {str(path)!r}: task: expected 'grading'")
    _unknown("protocol", data, _KEYS)
    inp = data.get("input")
    if not isinstance(inp, Mapping):
        raise ProtocolError(f"input: expected a mapping with keys {sorted(_INPUT_KEYS)}; found {inp!r}")
    _unknown("input", inp, _INPUT_KEYS)
    fmt = inp.get("format", "long")
    if fmt not in ("long", "rsna"):
        raise ProtocolError(f"input.format: allowed values are ['long', 'rsna']; found {fmt!r}")
    if not isinstance(inp.get("table"), str):
        raise ProtocolError(f"input.table: expected a file path; found {inp.get('table')!r}")
    if fmt == "rsna" and not isinstance(inp.get("predictions"), str):
        raise ProtocolError(f"input.predictions: the RSNA format needs the submission file of the model; found {inp.get('predictions')!r}")
    scale_name = data.get("scale", "rsna")
    if scale_name not in SCALES:
        raise ProtocolError(f"scale: allowed values are {sorted(SCALES)}; found {scale_name!r}")
    if fmt == "rsna" and scale_name != "rsna":
        raise ProtocolError(f"scale: the RSNA format uses the 'rsna' scale; found {scale_name!r}")
    boot = data.get("bootstrap", {}) or {}
    if not isinstance(boot, Mapping):
        raise ProtocolError(f"bootstrap: expected a mapping with keys {sorted(_BOOTSTRAP_KEYS)}; found {boot!r}")
    _unknown("bootstrap", boot, _BOOTSTRAP_KEYS)
    criteria = []
    for i, crit in enumerate(data.get("criteria", []) or []):
        if not isinstance(crit, Mapping):
            raise ProtocolError(f"criteria[{i}]: expected a mapping; found {crit!r}")
        try:
            criteria.append(GradingCriterion(**dict(crit)))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"criteria[{i}]: {exc}") from None
    margins = data.get("equivalence_margins", None)
    if margins is not None and not (isinstance(margins, Mapping) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in margins.values())):
        raise ProtocolError(f"equivalence_margins: expected a mapping of rate to a positive margin, rates in {list(RATES)}; found {margins!r}")
    references = data.get("reference_groups", {}) or {}
    if not isinstance(references, Mapping) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in references.values()):
        raise ProtocolError(f"reference_groups: expected a mapping of fairness grouping to its reference group (e.g. {{vendor: GE}}); found {references!r}")
    fairness_groups = data.get("fairness_groups", GradingAudit().fairness_groups)
    stray = sorted(set(map(str, references)) - set(map(str, fairness_groups or ())))
    if stray:
        raise ProtocolError(f"reference_groups: {stray} are not fairness_groups {list(fairness_groups or ())}")
    defaults = GradingAudit()
    try:
        audit = GradingAudit(
            scale=SCALES[scale_name], reference=str(data.get("reference", "reference" if fmt == "rsna" else defaults.reference)),
            model=str(data.get("model", defaults.model)), breakdowns=tuple(data.get("breakdowns", defaults.breakdowns)),
            fairness_groups=tuple(data.get("fairness_groups", defaults.fairness_groups)), criteria=tuple(criteria),
            n_resamples=int(boot.get("n_resamples", defaults.n_resamples)), seed=int(boot.get("seed", defaults.seed)),
            level=float(boot.get("level", defaults.level)), min_group_size=int(data.get("min_group_size", defaults.min_group_size)),
            alpha=float(data.get("alpha", defaults.alpha)), multiplicity=str(data.get("multiplicity", defaults.multiplicity)),
            equivalence_margins=tuple((str(k), float(v)) for k, v in margins.items()) if margins is not None else (),
            age_bands=tuple(float(e) for e in data.get("age_bands", defaults.age_bands)),
            reference_groups=tuple((str(k), str(v)) for k, v in references.items()),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"protocol file {str(path)!r}: {exc}") from None
    edges = audit.age_bands
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ProtocolError(f"age_bands: need at least two strictly increasing edges; found {list(edges)}")
    if not 0 < audit.level < 1 or audit.n_resamples < 100:
        raise ProtocolError(f"bootstrap: level must be in (0, 1) and n_resamples at least 100; found {audit.level} and {audit.n_resamples}")
    base = path.resolve().parent
    series = inp.get("series")
    if series is not None and (fmt != "rsna" or not isinstance(series, str)):
        raise ProtocolError(f"input.series: a train_series_descriptions.csv path, for the RSNA format only; found {series!r} with format {fmt!r}")
    return GradingProtocol(name=str(data.get("name", "grading")), input_format=fmt, table=base / inp["table"],
                           predictions=base / inp["predictions"] if fmt == "rsna" else None, audit=audit,
                           series=base / series if series else None, metadata=_metadata_spec(inp.get("metadata"), base))  # fmt: skip


def _metadata_spec(value: Any, base: Path) -> MetadataSpec | None:
    """``input.metadata``: a table path, or a mapping ``{path, columns, site, pseudonymize}`` (as ``metric_input.metadata``)."""
    if value is None:
        return None
    value = {"path": value} if isinstance(value, str) else value
    if not isinstance(value, Mapping) or not isinstance(value.get("path"), str):
        raise ProtocolError(f"input.metadata: expected a table path or a mapping with keys {sorted(_METADATA_KEYS)} and a path; found {value!r}")
    _unknown("input.metadata", value, _METADATA_KEYS)
    columns = value.get("columns", {}) or {}
    if not isinstance(columns, Mapping):
        raise ProtocolError(f"input.metadata.columns: expected a mapping of canonical key to table column; found {columns!r}")
    site = value.get("site")
    return MetadataSpec(path=base / value["path"], columns={str(k): str(v) for k, v in columns.items()}, site=None if site is None else str(site),
                        pseudonymize=bool(value.get("pseudonymize", False)))  # fmt: skip


def read_grading_input(protocol: GradingProtocol) -> tuple[pd.DataFrame, list, dict[str, Any]]:
    """The tidy grading table (references and model, with the metadata table's columns), the read failures, and the
    RSNA series summary (empty without ``input.series``) of a protocol's input files."""
    if protocol.input_format == "long":
        table, failures = read_long_table(protocol.table, scale=protocol.audit.scale)
    else:
        reference, failures = read_rsna_train(protocol.table, reader=protocol.audit.reference)
        assert protocol.predictions is not None
        table = pd.concat([reference, read_rsna_submission(protocol.predictions, reader=protocol.audit.model)], ignore_index=True)
    if protocol.metadata is not None:
        table, meta_failures = attach_metadata(table, protocol.metadata, age_bands=protocol.audit.age_bands)
        failures = [*failures, *meta_failures]
    series: dict[str, Any] = {}
    if protocol.series is not None:
        available, series_failures = read_rsna_series(protocol.series)
        failures = [*failures, *series_failures]
        flags = missing_series(table[table["reader"] == protocol.audit.reference], available)
        if len(flags):
            logger.warning("%d graded (study, condition) pairs lack the series the condition is graded on (scored; counted in the results)", len(flags))
        series = series_summary(available, flags)
    return table, failures, series
