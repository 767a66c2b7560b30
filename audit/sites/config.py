"""Site configuration: load, validate and resolve a ``sites/*.yaml`` file or an inline mapping."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from audit.errors import SiteConfigError
from audit.harmonize.labels import resolve_label_map
from audit.harmonize.metadata import RAW_KEYS
from audit.ontology import LabelMap, is_annotated, structure
from audit.sites.base import COMMON_OPTIONS, SYMLINK_POLICIES, check_relative_pattern, get_adapter
from audit.yamlio import load_yaml

if TYPE_CHECKING:
    from audit.protocol import Protocol

logger = logging.getLogger(__name__)

__all__ = ["SiteConfig", "SiteConfigError", "load_site_config", "resolve_sites"]

_TOP_KEYS = ("name", "format", "root", "label_map", "annotates", "options", "defaults")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class SiteConfig:
    """A validated site configuration.

    Attributes
    ----------
    name : str
        Site name: the ``site`` column and the ``case_id`` prefix.
    format : str
        Adapter name (``nifti_table``, ``bids``, ``nnunet``, ``dicom``, ``cspineseg``).
    root : Path
        Absolute data folder (environment variables expanded, relative roots resolved against the YAML's folder).
    label_map : LabelMap
        Meaning of the reference label values.
    options : Mapping[str, Any]
        Format-specific options (validated names).
    defaults : Mapping[str, Any]
        Raw metadata values for the whole site, used where a case has none (keys of ``RAW_KEYS``).
    source : Path or None
        The YAML file, when loaded from one.
    annotates : tuple of str or None
        Structures the site's reference standard annotates (config key ``annotates``); None means every
        structure its label map names. A protocol structure the site does not annotate is ``not_assessed``
        for its cases (see :attr:`annotated_structures`).
    """

    name: str
    format: str
    root: Path
    label_map: LabelMap
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None
    annotates: tuple[str, ...] | None = None

    @property
    def annotated_structures(self) -> tuple[str, ...]:
        """The structures the reference standard annotates: ``annotates``, or the structures the label map names."""
        return self.annotates if self.annotates is not None else self.label_map.structures

    def annotated(self, name: str) -> bool:
        """True when this site's reference can score structure ``name`` (see :func:`audit.ontology.is_annotated`)."""
        return is_annotated(name, self.annotated_structures)

    @property
    def label_map_name(self) -> str:
        """Name written to the manifest's ``label_map`` column."""
        return self.label_map.name

    def option(self, key: str, default: Any = None) -> Any:
        """An option value or ``default``."""
        return self.options.get(key, default)


def _expand_root(raw: Any, where: str, base_dir: Path, cohort_dir: Path | None) -> Path:
    if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
        raise SiteConfigError(f"{where}.root: expected a folder path (string); found {raw!r}")
    text = str(raw)
    if "{cohort}" in text:
        if cohort_dir is None:
            raise SiteConfigError(f"{where}.root: contains {{cohort}} but no synthetic cohort folder was given; found {text!r}")
        text = text.replace("{cohort}", str(cohort_dir))
    expanded = os.path.expanduser(os.path.expandvars(text))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", expanded)
    if unset:
        raise SiteConfigError(f"{where}.root: environment variable(s) {unset} are not set; found {text!r}")
    path = Path(expanded)
    return (path if path.is_absolute() else base_dir / path).resolve()


def _read_source(source: str | Path | Mapping[str, Any], base_dir: Path | None) -> tuple[dict[str, Any], Path, Path | None]:
    if isinstance(source, Mapping):
        data = dict(source)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        if "config" in data:  # a protocol entry pointing at a file, possibly with overrides
            ref = Path(os.path.expandvars(str(data.pop("config"))))
            ref = ref if ref.is_absolute() else base / ref
            file_data, file_base, file_path = _read_source(ref, None)
            file_data.update(data)
            return file_data, file_base, file_path
        return data, base, None
    path = Path(source)
    if not path.is_file():
        raise SiteConfigError(f"site config: file {path} {'is not a file' if path.exists() else 'not found'}")
    try:
        with path.open(encoding="utf-8") as handle:
            data = load_yaml(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SiteConfigError(f"site config {path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, Mapping):
        raise SiteConfigError(f"site config {path}: expected a mapping at the top level; found {type(data).__name__}")
    return dict(data), (Path(base_dir) if base_dir is not None else path.parent).resolve(), path.resolve()


def load_site_config(
    source: str | Path | Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    cohort_dir: Path | None = None,
) -> SiteConfig:
    """Load and validate a site config.

    Parameters
    ----------
    source : str, Path or Mapping
        A YAML file, or an inline mapping (as in a protocol's ``sites:`` list). A mapping with a ``config``
        key loads that file (relative to ``base_dir``) and applies the other keys as overrides.
    base_dir : Path, optional
        Folder that relative roots resolve against (default: the YAML file's folder, or the working directory).
    cohort_dir : Path, optional
        Replaces the ``{cohort}`` token in ``root``.

    Raises
    ------
    SiteConfigError
        For a missing or unknown key, an unknown format, label map or option; the message names the field
        path, the allowed values and the value found.
    """
    data, base, path = _read_source(source, base_dir)
    where = f"sites[{data.get('name', '?')}]"
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise SiteConfigError(f"{where}: allowed keys are {list(_TOP_KEYS)}; found unexpected {unknown}")
    for key in ("name", "format", "root"):
        if key not in data:
            raise SiteConfigError(f"{where}.{key}: required")
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise SiteConfigError(f"{where}.name: expected letters, digits, '_', '-', '.' (no '/'); found {name!r}")
    try:
        adapter = get_adapter(str(data["format"]))
    except KeyError as exc:
        raise SiteConfigError(f"{where}.format: {exc.args[0]}") from None
    root = _expand_root(data["root"], where, base, cohort_dir)
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise SiteConfigError(f"{where}.options: expected a mapping; found {options!r}")
    allowed = sorted(adapter.options | COMMON_OPTIONS)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise SiteConfigError(f"{where}.options: format {adapter.name!r} allows {allowed}; found unexpected {bad}")
    for key in sorted(adapter.path_options & set(options)):
        try:
            check_relative_pattern(str(options[key]))
        except ValueError as exc:
            raise SiteConfigError(f"{where}.options.{key}: {exc}") from None
    if options.get("symlinks", "refuse") not in SYMLINK_POLICIES:
        raise SiteConfigError(f"{where}.options.symlinks: allowed values are {list(SYMLINK_POLICIES)}; found {options['symlinks']!r}")
    age_policy = options.get("on_unparseable_age", "error")
    if age_policy not in ("error", "unknown"):
        raise SiteConfigError(f"{where}.options.on_unparseable_age: allowed 'error' or 'unknown'; found {age_policy!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping) or set(defaults) - set(RAW_KEYS):
        raise SiteConfigError(f"{where}.defaults: allowed keys are {list(RAW_KEYS)}; found {defaults!r}")
    spec = data.get("label_map")
    if spec is None and adapter.infer_label_map is not None:
        try:
            spec = adapter.infer_label_map(root)
        except ValueError as exc:
            raise SiteConfigError(f"{where}.label_map: {exc}") from None
    if spec is None:
        spec = adapter.default_label_map
    if spec is None:
        raise SiteConfigError(f"{where}.label_map: required for format {adapter.name!r} (a known map name or {{value: structure}})")
    try:
        label_map = resolve_label_map(spec, name=f"{name}:custom")
    except (KeyError, ValueError) as exc:
        raise SiteConfigError(f"{where}.label_map: {exc.args[0]}") from None
    annotates = _annotates(data.get("annotates"), label_map, where)
    return SiteConfig(
        name=name,
        format=adapter.name,
        root=root,
        label_map=label_map,
        options=MappingProxyType(dict(options)),
        defaults=MappingProxyType(dict(defaults)),
        source=path,
        annotates=annotates,
    )


def _annotates(raw: Any, label_map: LabelMap, where: str) -> tuple[str, ...] | None:
    """Validate ``annotates``: a non-empty list of ontology structures, each one the label map can express."""
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(n, str) for n in raw):
        raise SiteConfigError(f"{where}.annotates: expected a non-empty list of structure names; found {raw!r}")
    for i, name in enumerate(raw):
        try:
            structure(name)
        except KeyError as exc:
            raise SiteConfigError(f"{where}.annotates[{i}]: {exc.args[0]}") from None
        if not is_annotated(name, label_map.structures):
            raise SiteConfigError(
                f"{where}.annotates[{i}]: label map {label_map.name!r} has no value for {name!r} "
                f"(it expresses {list(label_map.structures)}); found {name!r}"
            )
    if len(set(raw)) != len(raw):
        raise SiteConfigError(f"{where}.annotates: structure names must be unique; found {list(raw)}")
    return tuple(raw)


def resolve_sites(protocol: Protocol, cohort_dir: Path | None) -> list[SiteConfig]:
    """Site configs of the protocol (inline or by path), or every generated site of the synthetic cohort.

    A path entry may use environment variables and ``{cohort}`` (the synthetic cohort folder); relative paths and
    inline roots resolve against the protocol's folder.
    """
    base = Path(protocol.base_dir)
    if not protocol.sites:
        if cohort_dir is None:
            raise ValueError("sites: the protocol lists no sites and has no synthetic_cohort section")
        return [load_site_config(p, cohort_dir=cohort_dir) for p in sorted((cohort_dir / "sites").glob("*.yaml"))]
    configs = []
    for entry in protocol.sites:
        if "config" in entry:
            path = Path(os.path.expandvars(str(entry["config"])).replace("{cohort}", str(cohort_dir or "")))
            configs.append(load_site_config(path if path.is_absolute() else base / path, cohort_dir=cohort_dir))
        else:
            configs.append(load_site_config(dict(entry), base_dir=base, cohort_dir=cohort_dir))
    return configs
