"""What an adapter produces, the adapter registry, and helpers shared by the table-based adapters."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from audit.errors import SiteDataError
from audit.records import CaseFailure

if TYPE_CHECKING:
    from audit.sites.config import SiteConfig

logger = logging.getLogger(__name__)

__all__ = [
    "RawCase",
    "Adapter",
    "SiteDataError",
    "COMMON_OPTIONS",
    "register_adapter",
    "get_adapter",
    "adapter_names",
    "read_table",
    "pattern_regex",
    "missing_file_failure",
    "resolve_columns",
    "raw_metadata",
    "ID_KEYS",
    "PathOutsideRootError",
    "SYMLINK_POLICIES",
    "check_relative_pattern",
    "check_case_id",
    "path_in_root",
    "site_path",
]

#: Options every format accepts (see docs/sites.md).
COMMON_OPTIONS: frozenset[str] = frozenset({"pseudonymize", "extra_columns", "on_unparseable_age", "symlinks"})
#: Values of the ``symlinks`` option: a symbolic link whose target lies outside the site root is refused (a
#: per-case ``PathOutsideRootError``) or allowed and logged.
SYMLINK_POLICIES: tuple[str, ...] = ("refuse", "allow")


@dataclasses.dataclass(frozen=True)
class RawCase:
    """One case as found by an adapter, before harmonization.

    Attributes
    ----------
    local_id : str
        Identifier within the site (``case_id = f"{site}/{local_id}"``).
    image_path, label_path : Path
        Existing NIfTI files.
    patient_id : str or None
        Patient identifier for clustering (``None``: the local id is used).
    metadata : Mapping[str, Any]
        Raw values under :data:`audit.harmonize.metadata.RAW_KEYS`.
    extra : Mapping[str, Any]
        Further manifest columns (non-identifying), e.g. ``split`` or ``session``.
    failure : CaseFailure or None
        Set when the case is known (with its metadata) but cannot be used, e.g. its label file is missing:
        the case keeps a manifest row with its metadata and this failure is recorded (:meth:`failed`).
    """

    local_id: str
    image_path: Path
    label_path: Path
    patient_id: str | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    failure: CaseFailure | None = None

    def failed(self, failure: CaseFailure) -> RawCase:
        """This case, marked as failed (it keeps its metadata in the manifest)."""
        return dataclasses.replace(self, failure=failure)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A site format.

    Attributes
    ----------
    name : str
        The ``format`` value of a site config.
    iter_cases : Callable[[SiteConfig], Iterator[RawCase | CaseFailure]]
        Lazily yields found cases and per-case failures; raises :class:`SiteDataError` for site-level problems.
    options : frozenset of str
        Format-specific option names (the common ones are always allowed).
    default_label_map : str or None
        Label map used when the config gives none.
    infer_label_map : Callable[[Path], Any] or None
        Reads a label map from the data (nnU-Net ``dataset.json``) when the config gives none.
    description : str
    path_options : frozenset of str
        Options that name files or file patterns relative to the root; :func:`load_site_config` refuses one
        that is absolute or has a ``..`` component (:func:`check_relative_pattern`).
    """

    name: str
    iter_cases: Callable[[SiteConfig], Iterator[RawCase | CaseFailure]]
    options: frozenset[str] = frozenset()
    default_label_map: str | None = None
    infer_label_map: Callable[[Path], Any] | None = None
    description: str = ""
    path_options: frozenset[str] = frozenset()


_REGISTRY: dict[str, Adapter] = {}
_BUILTIN_MODULES = ("nifti_table", "bids", "nnunet", "dicom", "cspineseg")


def register_adapter(adapter: Adapter, *, replace: bool = False) -> Adapter:
    """Register a site format; raises ``ValueError`` if the name is taken (unless ``replace``)."""
    if adapter.name in _REGISTRY and not replace and _REGISTRY[adapter.name] is not adapter:
        raise ValueError(f"register_adapter: format {adapter.name!r} is already registered; pass replace=True")
    _REGISTRY[adapter.name] = adapter
    return adapter


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"audit.sites.{module}")


def adapter_names() -> tuple[str, ...]:
    """Registered format names."""
    _load_builtins()
    return tuple(sorted(_REGISTRY))


def get_adapter(name: str) -> Adapter:
    """Return the adapter of a format.

    Raises
    ------
    KeyError
        If no adapter has this name; the message lists the registered formats.
    """
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"format: unknown site format {name!r}; allowed: {sorted(_REGISTRY)}") from None


def read_table(path: Path, *, what: str = "metadata table") -> pd.DataFrame:
    """Read a CSV or TSV (by extension; ``.tsv``/``.tab`` tab-separated) with every column as string.

    Raises
    ------
    SiteDataError
        If the file is missing or unreadable.
    """
    if not path.is_file():
        raise SiteDataError(f"{what} {path} not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise SiteDataError(f"{what} {path} cannot be parsed: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching a path pattern with ``{field}`` placeholders (each captures one path component part)."""
    parts = re.split(r"(\{[a-z_]+\})", pattern)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+?)" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


def missing_file_failure(case_id: str, site: str, role: str, path: Path) -> CaseFailure:
    """The failure for a case whose image or label file is absent."""
    kind = "MissingImage" if role == "image" else "MissingLabel"
    return CaseFailure(case_id=case_id, stage="adapter", error=f"{role} file not found: {path}", error_type=kind, site=site)


#: Keys a ``columns`` option may map (besides the raw metadata keys).
ID_KEYS: tuple[str, ...] = ("case_id", "patient_id")


def resolve_columns(
    table_columns: Sequence[str], mapping: Mapping[str, str] | None, *, where: str, defaults: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Resolve a ``columns`` option: canonical key -> table column.

    Keys default to ``defaults`` (or the key itself) when that column exists in the table. A column
    named explicitly but absent from the table raises :class:`SiteDataError`.
    """
    from audit.harmonize.metadata import RAW_KEYS

    allowed = (*ID_KEYS, *RAW_KEYS)
    mapping = dict(mapping or {})
    bad = sorted(set(mapping) - set(allowed))
    if bad:
        raise SiteDataError(f"{where}.columns: allowed keys are {list(allowed)}; found unexpected {bad}")
    present = set(table_columns)
    out: dict[str, str] = {}
    for key in allowed:
        if key in mapping:
            column = str(mapping[key])
            if column not in present:
                raise SiteDataError(f"{where}.columns.{key}: column {column!r} not in the table; columns are {sorted(present)}")
            out[key] = column
        else:
            candidate = (defaults or {}).get(key, key)
            if candidate in present:
                out[key] = candidate
    return out


def raw_metadata(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Pick the raw metadata values of one table row through a resolved column mapping."""
    from audit.harmonize.metadata import RAW_KEYS

    return {k: row.get(columns[k]) for k in RAW_KEYS if k in columns}


# ---- Paths never leave the site root ---------------------------------------------------------------------------


class PathOutsideRootError(ValueError):
    """A file named by a site (a case id put into a pattern, or a symbolic link) lies outside the site root."""


def check_relative_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a relative path that cannot climb out of the folder it is joined to.

    Raises
    ------
    ValueError
        If the pattern is empty, absolute (``/x``, ``~/x``, ``C:\\x``) or has a ``..`` component.

    Examples
    --------
    >>> check_relative_pattern("images/{case_id}.nii.gz")
    'images/{case_id}.nii.gz'
    """
    text = str(pattern)
    parts = re.split(r"[\\/]", text)
    if not text.strip() or text.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", text) or ".." in parts:
        raise ValueError(f"must be a relative path inside the site root (no leading '/', '~' or drive, no '..'); found {text!r}")
    return text


def check_case_id(local_id: str) -> str:
    """Return ``local_id`` if it can name files inside a site root (:func:`check_relative_pattern`'s rule).

    Raises
    ------
    PathOutsideRootError
        For an empty id, an absolute one or one with a ``..`` component (``../../etc/passwd``).
    """
    try:
        return check_relative_pattern(local_id)
    except ValueError as exc:
        raise PathOutsideRootError(f"case id {local_id!r} cannot name a file inside the site root: it {exc}") from None


def path_in_root(root: Path, relative: str | os.PathLike[str], *, what: str, symlinks: str = "refuse") -> Path:
    """``root / relative``, refused when it leaves ``root``: by its spelling, or through a symbolic link.

    Parameters
    ----------
    root : Path
        The site root (absolute; :func:`audit.sites.load_site_config` resolves it).
    relative : str or PathLike
        A path relative to ``root``, typically a pattern filled with a case id from a metadata table.
    what : str
        What the file is, for the message (``"image"``, ``"label"``, ``"metadata table"``).
    symlinks : {"refuse", "allow"}
        ``"allow"`` accepts a link whose target is outside the root (logged at debug level); the spelling is
        always checked.

    Returns
    -------
    Path
        The joined, normalized path (symbolic links kept as written). It need not exist.

    Raises
    ------
    PathOutsideRootError
        If the path is absolute or has a ``..`` component (even one that stays inside), or (``symlinks="refuse"``)
        resolves outside the root.

    Examples
    --------
    >>> path_in_root(Path("/data/site"), "images/a.nii.gz", what="image").as_posix()
    '/data/site/images/a.nii.gz'
    >>> path_in_root(Path("/data/site"), "images/../../etc/passwd", what="image")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    audit.sites.base.PathOutsideRootError: image path 'images/../../etc/passwd' leaves the site root /data/site ...
    """
    if symlinks not in SYMLINK_POLICIES:
        raise ValueError(f"symlinks: allowed values are {list(SYMLINK_POLICIES)}; found {symlinks!r}")
    root = Path(root)
    text = os.fspath(relative)
    joined = Path(os.path.normpath(root / text))
    climbs = ".." in re.split(r"[\\/]", text)
    if Path(text).is_absolute() or climbs or not joined.is_relative_to(Path(os.path.normpath(root))):
        raise PathOutsideRootError(f"{what} path {text!r} leaves the site root {root} (absolute paths and '..' are refused)")
    real = joined.resolve()
    if not real.is_relative_to(root.resolve()):
        if symlinks == "refuse":
            raise PathOutsideRootError(
                f"{what} path {text!r} is a symbolic link (or lies under one) whose target is outside the site root {root}; "
                "set the site option symlinks: allow to accept it"
            )
        logger.debug("%s path %s follows a symbolic link out of the site root %s (symlinks: allow)", what, joined, root)
    return joined


def site_path(config: SiteConfig, relative: str | os.PathLike[str], *, what: str) -> Path:
    """:func:`path_in_root` with the site's root and its ``symlinks`` option (the one check every adapter uses)."""
    return path_in_root(config.root, relative, what=what, symlinks=str(config.option("symlinks", "refuse")))
