"""The audit protocol: a pre-registered YAML file, validated into frozen dataclasses and hashed.

Loading is strict: unknown keys, wrong types and values outside an allowed set are errors that name the
field path (``statistics.multiplicity``), the allowed values and the value found. The sha256 of the
protocol's canonical form (defaults filled, keys sorted, compact JSON) goes into every output, so two
runs with the same hash were pre-registered identically.

The ``sites`` and ``model`` sections are kept as validated-later mappings: their schemas belong to
:mod:`audit.sites` and :mod:`audit.inference`. :func:`validate_inputs` checks them against the file system
before the run folder is created, and :func:`validate_against_manifest` checks the columns the protocol names
right after the sites stage (both in :mod:`audit.protocol_checks`). YAML duplicate keys are refused
(:mod:`audit.yamlio`); numbers must be finite (``.nan`` and ``.inf`` are refused everywhere).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from audit import ontology
from audit.harmonize.limits import ReadLimits
from audit.errors import ProtocolError
from audit.execution.settings import ExecutionSettings, validate_execution
from audit.protocol_checks import check_names, validate_against_manifest, validate_inputs
from audit.records import DEFAULT_AGE_BAND_EDGES
from audit.typed_config import build_dataclass, to_plain
from audit.yamlio import load_yaml

logger = logging.getLogger(__name__)

__all__ = [
    "ProtocolError",
    "SyntheticCohortSettings",
    "MetricSettings",
    "SubgroupSettings",
    "AdjustedModelSettings",
    "StatisticsSettings",
    "AcceptanceCriterion",
    "ReportSettings",
    "VertebraSettings",
    "StudySettings",
    "Protocol",
    "load_protocol",
    "protocol_from_dict",
    "protocol_to_dict",
    "protocol_sha256",
    "canonical_sha256",
    "validate_inputs",
    "validate_against_manifest",
]


@dataclasses.dataclass(frozen=True)
class SyntheticCohortSettings:
    """Generate the embedded synthetic cohort into ``<run>/cohort`` before the audit."""

    seed: int = 0
    n_cases: int = 48
    hard_site: str | None = "site-D"
    age_effect: bool = True
    null_sites: bool = False
    repeat_fraction: float = 0.1
    #: ``ct``: the synthetic CT cohort of :mod:`audit.synthetic.ct_cohort` (hard_site names a CT source or null).
    modality: Literal["mri", "ct"] = "mri"


@dataclasses.dataclass(frozen=True)
class VertebraSettings:
    """Per-vertebra evaluation as VerSe defines it (:mod:`audit.metrics.vertebrae`); see docs/ct.md."""

    max_distance_mm: float = 20.0
    shape_dice_threshold: float = 0.7


@dataclasses.dataclass(frozen=True)
class MetricSettings:
    """Which metrics to compute and the empty-mask policy."""

    names: tuple[str, ...] = ("dice", "hd95")
    nsd_tolerances_mm: tuple[float, ...] = ()
    missed_distance: float | Literal["diagonal"] = "diagonal"
    per_level: bool = False


@dataclasses.dataclass(frozen=True)
class SubgroupSettings:
    """Subgroup axes: metadata columns, age bands (edges in years) and intersections."""

    columns: tuple[str, ...] = ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band")
    age_bands: tuple[float, ...] = DEFAULT_AGE_BAND_EDGES
    intersections: tuple[tuple[str, ...], ...] = ()
    reference_groups: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AdjustedModelSettings:
    """A mixed model of a case-level metric on several factors with a random intercept per site."""

    enabled: bool = True
    metric: str = "dice"
    structure: str | None = None
    factors: tuple[str, ...] = ("vendor", "field_strength", "age_years", "sex", "race")
    groups: str = "site"


@dataclasses.dataclass(frozen=True)
class StatisticsSettings:
    """Uncertainty, testing and multiplicity settings."""

    confidence_level: float = 0.95
    bootstrap_iterations: int = 1000
    bootstrap_method: Literal["percentile", "bca"] = "percentile"
    seed: int = 0
    alpha: float = 0.05
    multiplicity: Literal["holm", "fdr_bh", "bonferroni", "none"] = "holm"
    min_group_size: int = 10
    primary_metric: str = "dice"
    equivalence_margins: Mapping[str, float] = dataclasses.field(default_factory=dict)
    failure_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    failure_interval: Literal["wilson", "clopper_pearson"] = "wilson"
    gap_test: Literal["auto", "permutation"] = "auto"
    #: How failed cases count in acceptance criteria: scored at the metric's worst value (default) or left out.
    failure_policy: Literal["worst_value", "complete_case"] = "worst_value"
    permutation_iterations: int = 10_000
    adjusted_model: AdjustedModelSettings = dataclasses.field(default_factory=AdjustedModelSettings)


@dataclasses.dataclass(frozen=True)
class AcceptanceCriterion:
    """One pre-registered acceptance criterion.

    ``estimate`` is what is judged: the ``mean`` or ``median`` of the metric, the ``failure_rate``
    (share of cases beyond ``statistics.failure_thresholds``), the ``gap_vs_reference`` (largest absolute
    gap of any group to the reference group of ``scope``) or ``gap_worst_best``. ``bound`` says whether the
    lower or upper confidence bound (or the point estimate) is compared with ``threshold`` by ``operator``.
    ``scope`` is ``overall``, ``new_site`` (the 95% prediction interval of the mean at a new site from the
    random-effects meta-analysis of site means; ``estimate: mean`` only) or a subgroup axis (every group of
    that axis must pass). ``structure`` is a
    structure name or ``all`` (every protocol structure must pass).
    """

    id: str
    metric: str
    threshold: float
    operator: Literal[">=", "<="] = ">="
    estimate: Literal["mean", "median", "failure_rate", "gap_vs_reference", "gap_worst_best"] = "mean"
    bound: Literal["lower", "upper", "point"] = "lower"
    scope: str = "overall"
    structure: str = "all"
    description: str = ""


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """Presentation settings; ``synthetic_columns`` are flagged as synthetic in the report."""

    title: str = "Segmentation model audit"
    synthetic_columns: tuple[str, ...] = ()
    worst_cases_per_group: int = 3
    gallery_axes: tuple[str, ...] = ("site",)


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """Study context shown at the top of the report (all optional): the intended use of the model, the reference
    standard the masks come from, and when and where the protocol was registered (``registered``: ISO date)."""

    intended_use: str = ""
    reference_standard: str = ""
    registered: str = ""
    registry: str = ""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A validated audit protocol. Build it with :func:`load_protocol` or :func:`protocol_from_dict`."""

    name: str
    version: str
    model: Mapping[str, Any]
    structures: tuple[str, ...]
    sites: tuple[Mapping[str, Any], ...] = ()
    description: str = ""
    synthetic_cohort: SyntheticCohortSettings | None = None
    metrics: MetricSettings = dataclasses.field(default_factory=MetricSettings)
    subgroups: SubgroupSettings = dataclasses.field(default_factory=SubgroupSettings)
    statistics: StatisticsSettings = dataclasses.field(default_factory=StatisticsSettings)
    acceptance: tuple[AcceptanceCriterion, ...] = ()
    report: ReportSettings = dataclasses.field(default_factory=ReportSettings)
    #: ``images`` (sites, inference, metrics) or ``metrics`` (per-case metric tables, see :mod:`audit.tables_input`).
    input: Literal["images", "metrics"] = "images"
    metric_input: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Where per-case work runs (:mod:`audit.execution`); not part of the sha256.
    execution: ExecutionSettings = dataclasses.field(default_factory=ExecutionSettings)
    vertebrae: VertebraSettings | None = None
    study: StudySettings = dataclasses.field(default_factory=StudySettings)
    #: Per-file voxel and memory budget checked from each image header before its voxels are read.
    limits: ReadLimits = dataclasses.field(default_factory=ReadLimits)
    #: Folder of the protocol file; relative paths in ``sites`` and ``model`` resolve against it.
    base_dir: str = dataclasses.field(default=".", compare=False)

    @property
    def sha256(self) -> str:
        """The sha256 of the canonical form (see :func:`protocol_sha256`)."""
        return protocol_sha256(self)


# --------------------------------------------------------------------------------------------------
# Generic strict conversion of plain YAML data into the dataclasses above.


#: Largest protocol file read (a protocol is a few kilobytes).
MAX_PROTOCOL_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------
# Semantic checks that types alone cannot express.

_METADATA_AXES = ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "scanner_model")


def _check_semantics(protocol: Protocol) -> None:
    check_names(protocol)  # metric names, duplicates, resample bounds, identifier columns (audit.protocol_checks)
    if not protocol.structures:
        raise ProtocolError("structures: at least one structure is required")
    for i, name in enumerate(protocol.structures):
        try:
            ontology.structure(name)
        except KeyError as exc:
            raise ProtocolError(f"structures[{i}]: {exc.args[0]}") from None
    problems = validate_execution(protocol.execution)
    if problems:
        raise ProtocolError(problems[0])
    if protocol.input == "metrics":
        _check_metric_input(protocol)
    elif not protocol.sites and protocol.synthetic_cohort is None:
        raise ProtocolError("sites: at least one site is required (or a synthetic_cohort section)")
    for i, site in enumerate(protocol.sites):
        if "config" not in site and "name" not in site:
            raise ProtocolError(f"sites[{i}]: each site needs a 'name' (inline config) or a 'config' path; found {dict(site)}")
    for key in ("kind", "path"):
        if protocol.input == "metrics":
            break
        if key not in protocol.model and not (key == "path" and protocol.model.get("kind") == "predictions"):
            raise ProtocolError(f"model.{key}: required key is missing")
    stats = protocol.statistics
    if not 0.5 < stats.confidence_level < 1:
        raise ProtocolError(f"statistics.confidence_level: must be in (0.5, 1); found {stats.confidence_level}")
    if protocol.vertebrae is not None and not (protocol.vertebrae.max_distance_mm > 0 and 0 <= protocol.vertebrae.shape_dice_threshold <= 1):
        raise ProtocolError(f"vertebrae: need max_distance_mm > 0 and shape_dice_threshold in [0, 1]; found {protocol.vertebrae}")
    if not 0 < stats.alpha < 0.5:
        raise ProtocolError(f"statistics.alpha: must be in (0, 0.5); found {stats.alpha}")
    if stats.bootstrap_iterations < 100:
        raise ProtocolError(f"statistics.bootstrap_iterations: must be at least 100; found {stats.bootstrap_iterations}")
    if stats.permutation_iterations < 1000:
        raise ProtocolError(f"statistics.permutation_iterations: must be at least 1000; found {stats.permutation_iterations}")
    if stats.min_group_size < 2:
        raise ProtocolError(f"statistics.min_group_size: must be at least 2; found {stats.min_group_size}")
    gallery_allowed = ("site", *protocol.subgroups.columns)
    for i, axis in enumerate(protocol.report.gallery_axes):
        if axis not in gallery_allowed:
            raise ProtocolError(f"report.gallery_axes[{i}]: allowed values are {list(dict.fromkeys(gallery_allowed))} (site and the subgroup columns); found {axis!r}")
    if protocol.study.registered:
        try:
            datetime.date.fromisoformat(protocol.study.registered)
        except ValueError:
            raise ProtocolError(f"study.registered: expected an ISO date YYYY-MM-DD; found {protocol.study.registered!r}") from None
    edges = protocol.subgroups.age_bands
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ProtocolError(f"subgroups.age_bands: need at least two strictly increasing edges; found {list(edges)}")
    metric_names = set(protocol.metrics.names) | {f"nsd_{t:g}mm" for t in protocol.metrics.nsd_tolerances_mm}
    for i, crit in enumerate(protocol.acceptance):
        where = f"acceptance[{i}]"
        if crit.metric not in metric_names:
            raise ProtocolError(f"{where}.metric: must be one of the protocol's metrics {sorted(metric_names)}; found {crit.metric!r}")
        if crit.structure != "all" and crit.structure not in protocol.structures:
            raise ProtocolError(f"{where}.structure: allowed values are 'all' or {list(protocol.structures)}; found {crit.structure!r}")
        axes = ("overall", "new_site", *protocol.subgroups.columns)
        if crit.scope not in axes:
            raise ProtocolError(f"{where}.scope: allowed values are {list(axes)}; found {crit.scope!r}")
        if crit.scope == "new_site" and crit.estimate != "mean":
            raise ProtocolError(f"{where}.estimate: scope 'new_site' judges the mean (its prediction interval for a new site); found {crit.estimate!r}")
        if crit.estimate.startswith("gap") and crit.scope in ("overall", "new_site"):
            raise ProtocolError(f"{where}.scope: a gap estimate needs a subgroup axis, not {crit.scope!r}")
        if crit.estimate == "failure_rate" and crit.metric not in stats.failure_thresholds:
            raise ProtocolError(f"{where}.metric: failure_rate needs statistics.failure_thresholds.{crit.metric}")
    ids = [c.id for c in protocol.acceptance]
    if len(set(ids)) != len(ids):
        raise ProtocolError(f"acceptance: ids must be unique; found {ids}")
    for axis in protocol.subgroups.reference_groups:
        if axis not in protocol.subgroups.columns:
            raise ProtocolError(f"subgroups.reference_groups.{axis}: not a subgroup column {list(protocol.subgroups.columns)}")
    for i, combo in enumerate(protocol.subgroups.intersections):
        if len(combo) < 2:
            raise ProtocolError(f"subgroups.intersections[{i}]: an intersection needs two or more columns; found {list(combo)}")


def _check_metric_input(protocol: Protocol) -> None:
    """``input: metrics``: the metric_input section parses, and ``model.name`` names one of its tables."""
    from audit.tables_input import MetricInputError, parse_metric_input

    if not protocol.metric_input:
        raise ProtocolError("metric_input: required with input: metrics (the metadata table and one metric table per model)")
    try:
        spec = parse_metric_input(protocol.metric_input, base_dir=protocol.base_dir)
    except MetricInputError as exc:
        raise ProtocolError(str(exc)) from None
    models = [t.model for t in spec.tables]
    name = protocol.model.get("name", models[0])
    if name not in models:
        raise ProtocolError(f"model.name: with input: metrics, the audited model is one of the tables' models {models}; found {name!r}")


def protocol_from_dict(data: Mapping[str, Any], *, base_dir: str | Path = ".") -> Protocol:
    """Validate plain data (as parsed from YAML) into a :class:`Protocol`.

    Raises
    ------
    ProtocolError
        For unknown keys, wrong types, disallowed values or inconsistent settings; the message names the
        field path, the allowed values and the value found.
    """
    protocol = build_dataclass(Protocol, data, "", error=ProtocolError, root="protocol")
    protocol = dataclasses.replace(protocol, base_dir=str(Path(base_dir)))
    _check_semantics(protocol)
    return protocol


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol YAML file (a safe loader that refuses duplicate keys, :mod:`audit.yamlio`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROTOCOL_BYTES:
            raise ProtocolError(f"protocol file {str(path)!r} has {size:,} bytes; a protocol is at most {MAX_PROTOCOL_BYTES:,}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"protocol file {str(path)!r} cannot be read: {exc}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ProtocolError(f"protocol file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, Mapping):
        raise ProtocolError(f"protocol file {str(path)!r}: expected a mapping at the top level; found {type(data).__name__}")
    return protocol_from_dict(data, base_dir=path.resolve().parent)


def protocol_to_dict(protocol: Protocol) -> dict[str, Any]:
    """The canonical plain form: every default filled in, ready for JSON."""
    return to_plain(protocol)


#: Sections that decide where the audit runs, not what it computes: left out of the sha256.
UNHASHED_SECTIONS: tuple[str, ...] = ("execution",)


def protocol_sha256(protocol: Protocol) -> str:
    """sha256 of the canonical JSON form (sorted keys, compact separators, UTF-8), ``execution`` left out."""
    return canonical_sha256(protocol_to_dict(protocol))


def canonical_sha256(data: Mapping[str, Any]) -> str:
    """sha256 of plain protocol data in canonical JSON form; equals :func:`protocol_sha256` for the canonical form.

    The ``protocol.yaml`` of a run folder is the canonical form, so this checks it without validating it again
    (``spine-audit verify`` compares it with ``protocol_sha256`` in results.json). :data:`UNHASHED_SECTIONS`
    are left out.
    """
    data = {k: v for k, v in data.items() if k not in UNHASHED_SECTIONS}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
