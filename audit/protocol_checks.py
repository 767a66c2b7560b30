"""Checks of everything a protocol names, in the three moments they can be made.

1. :func:`check_names`, at load (called by :func:`audit.protocol.protocol_from_dict`): metric names and
   ``primary_metric`` against the metric registry, duplicate structures or columns, resample counts within
   bounds, identifier or path columns used as subgroups. Pure: needs nothing but the protocol.
2. :func:`validate_inputs`, before the run folder is created: the model section parses and its file or folder
   exists, every site config is found, environment variables in site roots are set, site roots exist, a
   pseudonymizing site has its key. Reads the file system, never writes.
3. :func:`validate_against_manifest`, right after the sites stage and before inference: subgroup columns,
   adjusted-model factors, synthetic columns and reference groups exist in the manifest; no subgroup column
   holds file paths or one distinct value per case (an identifier). Pure.

Every failure is a :class:`~audit.errors.ProtocolError` (or another :class:`~audit.errors.UserError`) whose
message names the field path, the allowed values and the value found.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from audit.errors import ModelSpecError, PrivacyError, ProtocolError, SiteConfigError
from audit.harmonize.privacy import PSEUDONYM_KEY_ENV, is_identifier_or_path_column
from audit.yamlio import load_yaml

if TYPE_CHECKING:
    import pandas as pd

    from audit.protocol import Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_BOOTSTRAP_ITERATIONS",
    "MAX_PERMUTATION_ITERATIONS",
    "MAX_SYNTHETIC_CASES",
    "MIN_CASES_FOR_IDENTIFIER_CHECK",
    "check_names",
    "validate_inputs",
    "validate_against_manifest",
    "unset_variables",
]

#: Upper bounds on resample counts: beyond them a run takes days while the Monte Carlo error is already
#: negligible (at 100,000 resamples the SE of a 2.5% tail probability is 0.05 percentage points).
MAX_BOOTSTRAP_ITERATIONS = 100_000
MAX_PERMUTATION_ITERATIONS = 1_000_000
MAX_SYNTHETIC_CASES = 10_000
#: A subgroup column with one distinct value per case is refused as an identifier from this many cases on.
MIN_CASES_FOR_IDENTIFIER_CHECK = 20
#: Columns the pipeline derives from the manifest (``age_band`` from ``age_years``).
DERIVED_COLUMNS = ("age_band",)

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_PATH_VALUE = re.compile(r"^(?:/|~/|[A-Za-z]:[\\/]|\\\\)|\.(?:nii(?:\.gz)?|dcm|nrrd|mha|mhd|npz|png|jpe?g)$", re.IGNORECASE)


def _duplicates(values: Iterable[Any]) -> list[Any]:
    return sorted((v for v, n in collections.Counter(values).items() if n > 1), key=str)


def _subgroup_axes(protocol: Protocol) -> Iterator[tuple[str, str]]:
    """Every (field path, column) the protocol uses as a grouping or adjustment axis."""
    sub = protocol.subgroups
    for i, col in enumerate(sub.columns):
        yield f"subgroups.columns[{i}]", col
    for i, combo in enumerate(sub.intersections):
        for j, col in enumerate(combo):
            yield f"subgroups.intersections[{i}][{j}]", col
    adjusted = protocol.statistics.adjusted_model
    if adjusted.enabled:
        for i, col in enumerate(adjusted.factors):
            yield f"statistics.adjusted_model.factors[{i}]", col
        yield "statistics.adjusted_model.groups", adjusted.groups
    for i, col in enumerate(protocol.report.gallery_axes):
        yield f"report.gallery_axes[{i}]", col


def check_names(protocol: Protocol) -> None:
    """Check metric names, structures, resample counts and subgroup columns at load (pure).

    Raises
    ------
    ProtocolError
        Naming the field path, the allowed values and the value found.
    """
    from audit.metrics import metric_spec

    names = protocol.metrics.names
    for i, name in enumerate(names):
        if name == "nsd":
            continue  # shorthand for the nsd_<tol>mm metrics of nsd_tolerances_mm
        try:
            metric_spec(name)
        except ValueError as exc:
            raise ProtocolError(f"metrics.names[{i}]: {exc.args[0]}") from None
    for field, values in (("metrics.names", names), ("metrics.nsd_tolerances_mm", protocol.metrics.nsd_tolerances_mm), ("structures", protocol.structures), ("subgroups.columns", protocol.subgroups.columns)):
        dup = _duplicates(values)
        if dup:
            raise ProtocolError(f"{field}: each entry may appear once; repeated {dup}")
    for i, tol in enumerate(protocol.metrics.nsd_tolerances_mm):
        if tol <= 0:
            raise ProtocolError(f"metrics.nsd_tolerances_mm[{i}]: must be a positive distance in mm; found {tol}")
    missed = protocol.metrics.missed_distance
    if not isinstance(missed, str) and missed <= 0:
        raise ProtocolError(f"metrics.missed_distance: must be 'diagonal' or a positive distance in mm; found {missed}")
    if protocol.subgroups.age_bands[0] < 0:
        raise ProtocolError(f"subgroups.age_bands: ages are years >= 0; found {list(protocol.subgroups.age_bands)}")
    known = sorted({n for n in names if n != "nsd"} | {f"nsd_{t:g}mm" for t in protocol.metrics.nsd_tolerances_mm})
    stats = protocol.statistics
    if stats.primary_metric not in known:
        raise ProtocolError(f"statistics.primary_metric: must be one of the protocol's metrics {known}; found {stats.primary_metric!r}")
    adjusted = stats.adjusted_model
    if adjusted.enabled and adjusted.metric not in known:
        raise ProtocolError(f"statistics.adjusted_model.metric: must be one of the protocol's metrics {known}; found {adjusted.metric!r}")
    if adjusted.enabled and adjusted.structure is not None and adjusted.structure not in protocol.structures:
        raise ProtocolError(f"statistics.adjusted_model.structure: allowed values are null or {list(protocol.structures)}; found {adjusted.structure!r}")
    for field, mapping in (("failure_thresholds", stats.failure_thresholds), ("equivalence_margins", stats.equivalence_margins)):
        for metric, value in mapping.items():
            if metric not in known:
                raise ProtocolError(f"statistics.{field}.{metric}: not one of the protocol's metrics {known}")
            if field == "equivalence_margins" and value <= 0:
                raise ProtocolError(f"statistics.equivalence_margins.{metric}: must be positive; found {value}")
    for field, value, cap in (
        ("bootstrap_iterations", stats.bootstrap_iterations, MAX_BOOTSTRAP_ITERATIONS),
        ("permutation_iterations", stats.permutation_iterations, MAX_PERMUTATION_ITERATIONS),
    ):
        if value > cap:
            raise ProtocolError(f"statistics.{field}: must be at most {cap:,}; found {value:,}")
    cohort = protocol.synthetic_cohort
    if cohort is not None:
        if not 8 <= cohort.n_cases <= MAX_SYNTHETIC_CASES:
            raise ProtocolError(f"synthetic_cohort.n_cases: must be between 8 and {MAX_SYNTHETIC_CASES:,}; found {cohort.n_cases:,}")
        if not 0 <= cohort.repeat_fraction < 1:
            raise ProtocolError(f"synthetic_cohort.repeat_fraction: must be in [0, 1); found {cohort.repeat_fraction}")
    if not 0 <= protocol.report.worst_cases_per_group <= 50:
        raise ProtocolError(f"report.worst_cases_per_group: must be between 0 and 50; found {protocol.report.worst_cases_per_group}")
    for field, column in _subgroup_axes(protocol):
        if is_identifier_or_path_column(column) and not (field == "statistics.adjusted_model.groups" and column == "patient_id"):
            raise ProtocolError(
                f"{field}: {column!r} is an identifier or file-path column and may not group results "
                "(its values would be printed as group names); use a metadata column such as site, vendor or age_band"
            )


def unset_variables(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of the ``$VAR`` / ``${VAR}`` references in ``text`` that are not set (or empty) in the environment.

    Examples
    --------
    >>> unset_variables("${HOME_OF_DATA}/site-a/$SITE", {"SITE": "x"})
    ['HOME_OF_DATA']
    """
    env = os.environ if environ is None else environ
    names = [m.group("braced") or m.group("plain") for m in _VAR.finditer(text)]
    return list(dict.fromkeys(n for n in names if not env.get(n)))


def _require_set(text: str, where: str) -> None:
    missing = unset_variables(text)
    if missing:
        raise ProtocolError(f"{where}: environment variable {missing[0]} is not set (used in {text!r}); export it before the run")


def _site_entry_data(entry: Mapping[str, Any], where: str, base: Path) -> dict[str, Any]:
    """The site config a protocol entry means (its file merged with inline overrides)."""
    data = dict(entry)
    if "config" not in data:
        return data
    ref = str(data.pop("config"))
    _require_set(ref, f"{where}.config")
    path = Path(os.path.expanduser(os.path.expandvars(ref)))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ProtocolError(f"{where}.config: site config file {str(path)!r} not found")
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SiteConfigError(f"{where}.config: site config {str(path)!r} cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(loaded, Mapping):
        raise SiteConfigError(f"{where}.config: site config {str(path)!r} must be a mapping; found {type(loaded).__name__}")
    return {**loaded, **data}


def validate_inputs(protocol: Protocol) -> None:
    """Check that what the protocol points at exists, before anything is written.

    The model section parses and its file or folder exists; each site config is found, the environment
    variables its root uses are set, its root folder exists (roots under the synthetic ``{cohort}`` are
    checked by the sites stage), and a site with ``pseudonymize: true`` has its key.

    Raises
    ------
    ProtocolError, SiteConfigError, ModelSpecError, PrivacyError
        One :class:`~audit.errors.UserError` naming the field and the value found.
    """
    from audit.inference.spec import model_spec_from_dict
    from audit.sites import load_site_config

    base = Path(protocol.base_dir)
    raw_path = protocol.model.get("path")
    if isinstance(raw_path, str):
        _require_set(raw_path, "model.path")
    try:
        spec = model_spec_from_dict(protocol.model, base_dir=base)
    except ModelSpecError:
        raise
    except (ValueError, KeyError) as exc:
        raise ModelSpecError(str(exc.args[0] if exc.args else exc)) from None
    if spec.path is not None:
        wants_folder = spec.kind in ("monai_bundle", "nnunet", "predictions")
        if not (spec.path.is_dir() if wants_folder else spec.path.is_file()):
            what = "folder" if wants_folder else "file"
            raise ModelSpecError(f"model.path: kind {spec.kind!r} needs an existing {what}; found {str(spec.path)!r}")
    for i, entry in enumerate(protocol.sites):
        where = f"sites[{i}]"
        data = _site_entry_data(entry, where, base)
        root = data.get("root")
        if not isinstance(root, str):
            continue  # load_site_config reports the missing or mistyped root with its field path
        _require_set(root, f"{where}.root")
        if "{cohort}" in root:
            continue  # generated by the run; the sites stage checks it
        config = load_site_config(dict(entry), base_dir=base)
        if not config.root.is_dir():
            raise SiteConfigError(f"{where}.root: site {config.name!r}: folder {str(config.root)!r} does not exist")
        if config.option("pseudonymize", False) and not os.environ.get(PSEUDONYM_KEY_ENV):
            raise PrivacyError(f"{where}.options.pseudonymize: site {config.name!r} pseudonymizes ids; set the environment variable {PSEUDONYM_KEY_ENV} to a secret key")


def validate_against_manifest(protocol: Protocol, manifest: pd.DataFrame) -> None:
    """Check the columns and groups a protocol names against the sites stage's manifest (pure).

    Called by the pipeline right after the sites stage, before inference: a typo in a subgroup column fails in
    seconds, not after hours of inference. An empty manifest (every case failed in the adapters) is not checked:
    the run goes on to report the failures.

    Raises
    ------
    ProtocolError
        A named column absent from the manifest (the message lists the columns), a reference group absent
        from its axis (lists the groups), or a subgroup column whose values are file paths or one per case.

    Examples
    --------
    >>> import pandas as pd
    >>> from audit.protocol import load_protocol
    >>> from audit.cli import demo_protocol_path
    >>> protocol = load_protocol(demo_protocol_path())
    >>> validate_against_manifest(protocol, pd.DataFrame({"site": ["a"], "vendor": ["GE"]}))
    Traceback (most recent call last):
    ...
    audit.errors.ProtocolError: subgroups.columns[2]: 'field_strength' is not a manifest column; ...
    """
    if len(manifest) == 0:
        logger.warning("validate_against_manifest: the manifest is empty (every case failed in the sites stage); nothing to check")
        return
    available = set(manifest.columns) | set(DERIVED_COLUMNS)
    named: list[tuple[str, str]] = list(_subgroup_axes(protocol))
    named += [(f"report.synthetic_columns[{i}]", c) for i, c in enumerate(protocol.report.synthetic_columns)]
    for field, column in named:
        if column not in available:
            shown = sorted(c for c in available if not is_identifier_or_path_column(c))
            raise ProtocolError(f"{field}: {column!r} is not a manifest column; columns are {shown}")
    table = manifest
    reference = protocol.subgroups.reference_groups
    if "age_band" in reference:
        from audit.stats import add_age_band

        table = add_age_band(manifest, protocol.subgroups.age_bands)
    for axis, group in reference.items():
        groups = sorted(table[axis].astype(str).unique())
        if str(group) not in groups:
            raise ProtocolError(f"subgroups.reference_groups.{axis}: {group!r} is not a group of {axis!r}; groups are {groups}")
    for field, column in _subgroup_axes(protocol):
        if column in DERIVED_COLUMNS or column == "site" or column not in manifest.columns or field.startswith("statistics.adjusted_model"):
            continue
        _refuse_identifier_values(field, column, manifest[column])


def _refuse_identifier_values(field: str, column: str, values: Sequence[Any] | pd.Series) -> None:
    text = [str(v) for v in values if v is not None and str(v) not in ("", "nan", "Unknown")]
    if any(_PATH_VALUE.search(v) for v in text):
        example = next(v for v in text if _PATH_VALUE.search(v))
        raise ProtocolError(f"{field}: column {column!r} holds file paths (e.g. {example.rsplit('/', 1)[-1]!r}) and may not group results")
    if len(text) >= MIN_CASES_FOR_IDENTIFIER_CHECK and len(set(text)) == len(text):
        raise ProtocolError(
            f"{field}: column {column!r} has a different value for each of its {len(text)} cases: an identifier, "
            "not a group, and it may not group results"
        )
