"""``spine-audit sites check CONFIG``: what a data manager needs to see before an audit."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from audit.harmonize.checks import DEFAULT_ATOL_DIRECTION, DEFAULT_ATOL_MM, check_case
from audit.harmonize.limits import ReadLimits
from audit.records import DEFAULT_AGE_BAND_EDGES, CaseFailure, ManifestRow, age_bands
from audit.sites.base import SiteDataError
from audit.sites.config import SiteConfig
from audit.sites.manifest import iter_site

logger = logging.getLogger(__name__)

__all__ = ["SiteCheckReport", "check_site"]

_COUNT_COLUMNS = ("vendor", "field_strength", "scanner_model", "sex", "race", "ethnicity", "age_band")
_COMPLETENESS_COLUMNS = ("patient_id", "vendor", "field_strength", "scanner_model", "age_years", "sex", "race", "ethnicity")


@dataclasses.dataclass(frozen=True)
class SiteCheckReport:
    """Result of :func:`check_site`.

    Attributes
    ----------
    site, format, root : str
    n_cases : int
        Cases that entered the manifest (before voxel checks).
    n_checked : int
        Cases whose files were opened (voxel checks).
    failures : tuple of CaseFailure
        Adapter and harmonize failures, one per problem.
    site_error : str or None
        A problem with the whole site (missing metadata file, bad column mapping).
    label_values : Mapping[int, tuple[int, int, str]]
        Label value -> (cases, voxels, meaning: a structure name, ``'ignored'``, ``'background'`` or ``'UNKNOWN'``).
    completeness : Mapping[str, float]
        Fraction of cases whose column is known (not ``Unknown``/NaN).
    counts : Mapping[str, Mapping[str, int]]
        Cases per value of vendor, field strength, scanner model, sex, race, ethnicity, age band.
    orientations : Mapping[str, int]
        Cases per image orientation code (``'PIR'``, ...).
    metadata_warnings : Mapping[str, int]
        Unmapped metadata values and how many cases carry each.
    annotates : tuple of str
        Structures the site's reference standard annotates (site config ``annotates``).
    """

    site: str
    format: str
    root: str
    n_cases: int
    n_checked: int
    failures: tuple[CaseFailure, ...]
    site_error: str | None
    label_values: Mapping[int, tuple[int, int, str]]
    completeness: Mapping[str, float]
    counts: Mapping[str, Mapping[str, int]]
    orientations: Mapping[str, int]
    metadata_warnings: Mapping[str, int]
    annotates: tuple[str, ...] = ()

    @property
    def errors(self) -> list[CaseFailure]:
        """Every error: per-case failures plus the site-level error (as a failure with case id ``<site>/*``)."""
        out = list(self.failures)
        if self.site_error:
            out.insert(0, CaseFailure(f"{self.site}/*", "adapter", self.site_error, "SiteDataError", self.site))
        return out

    @property
    def ok(self) -> bool:
        """True when there is no error (metadata warnings alone do not fail a check)."""
        return not self.errors

    def sections(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """The report as ``(title, header, rows)`` tables; :meth:`render` and :meth:`to_rich` draw them."""
        n_ok = self.n_cases - len({f.case_id for f in self.failures if f.stage != "adapter"})
        summary = [
            ["site", self.site], ["format", self.format], ["root", self.root], ["annotates", ", ".join(self.annotates)],
            ["cases found", str(self.n_cases)], ["cases opened", str(self.n_checked)],
            ["cases passing all checks", str(max(n_ok, 0))], ["errors", str(len(self.errors))],
            ["status", "OK" if self.ok else "ERRORS"],
        ]
        kinds = collections.Counter(f.error_type for f in self.errors)
        sections = [("Summary", ["item", "value"], summary)]
        if kinds:
            sections.append(("Errors by kind", ["kind", "cases"], [[k, str(v)] for k, v in kinds.most_common()]))
            sections.append(
                ("Errors", ["case_id", "stage", "kind", "message"], [[f.case_id, f.stage, f.error_type, f.error] for f in self.errors])
            )
        sections.append(
            ("Label values seen", ["value", "meaning", "cases", "voxels"],
             [[str(v), m, str(c), str(n)] for v, (c, n, m) in sorted(self.label_values.items())])
        )
        sections.append(("Metadata completeness", ["column", "known"], [[c, f"{f:.0%}"] for c, f in self.completeness.items()]))
        for column, values in self.counts.items():
            sections.append((f"Cases by {column}", [column, "cases"], [[k, str(v)] for k, v in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))]))
        if self.orientations:
            sections.append(("Image orientation", ["axcodes", "cases"], [[k, str(v)] for k, v in sorted(self.orientations.items())]))
        if self.metadata_warnings:
            sections.append(("Unmapped metadata values (warnings)", ["warning", "cases"], [[k, str(v)] for k, v in self.metadata_warnings.items()]))
        return sections

    def render(self) -> str:
        """Plain-text rendering (fixed-width tables)."""
        lines: list[str] = []
        for title, header, rows in self.sections():
            widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
            lines.append(f"== {title} ==")
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
            lines.extend("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows)
            lines.append("")
        return "\n".join(lines)

    def to_rich(self) -> Any:
        """A ``rich`` renderable (a group of tables) for ``Console.print``."""
        from rich.console import Group
        from rich.table import Table

        tables = []
        for title, header, rows in self.sections():
            table = Table(title=title, title_justify="left")
            for h in header:
                table.add_column(h, overflow="fold")
            for row in rows:
                table.add_row(*row)
            tables.append(table)
        return Group(*tables)

    def __rich__(self) -> Any:
        return self.to_rich()


def check_site(
    config: SiteConfig,
    *,
    load_voxels: bool = True,
    max_cases: int | None = None,
    atol_mm: float = DEFAULT_ATOL_MM,
    atol_direction: float = DEFAULT_ATOL_DIRECTION,
    age_band_edges: Sequence[float] = DEFAULT_AGE_BAND_EDGES,
    limits: ReadLimits | None = None,
) -> SiteCheckReport:
    """Check a site: manifest-level checks for every case, voxel-level checks (:func:`check_case`).

    Parameters
    ----------
    config : SiteConfig
    load_voxels : bool
        Open image and label files (readability, geometry, label values). False: file-level checks only.
    max_cases : int, optional
        Open at most this many cases (the manifest-level checks still cover all).
    atol_mm, atol_direction : float
        Geometry tolerances (see :mod:`audit.harmonize.checks`).
    age_band_edges : sequence of float
        Band edges in years for the age-band counts (the protocol's ``subgroups.age_bands``; the same rule,
        :func:`audit.records.age_bands`, makes the report's bands).
    limits : ReadLimits, optional
        Per-file voxel and memory budget checked from each header (default :class:`ReadLimits`, the
        protocol default).
    """
    failures: list[CaseFailure] = []
    rows: list[ManifestRow] = []
    site_error = None
    try:
        for item in iter_site(config):
            (failures if isinstance(item, CaseFailure) else rows).append(item)
    except (SiteDataError, OSError) as exc:
        site_error = str(exc)
    lmap = config.label_map
    value_cases: collections.Counter[int] = collections.Counter()
    value_voxels: collections.Counter[int] = collections.Counter()
    orientations: collections.Counter[str] = collections.Counter()
    n_checked = 0
    if load_voxels:
        for row in rows[: max_cases if max_cases is not None else len(rows)]:
            result = check_case(row.case_id, row.image_path, row.label_path, lmap, site=config.name, atol_mm=atol_mm, atol_direction=atol_direction, limits=limits)
            n_checked += 1
            failures.extend(result.failures)
            for value, n in result.label_values.items():
                value_cases[value] += 1
                value_voxels[value] += n
            if result.axcodes:
                orientations[result.axcodes] += 1

    def meaning(value: int) -> str:
        if value == 0:
            return "background"
        if value in lmap.values:
            return lmap.values[value]
        return "ignored" if value in lmap.ignore else "UNKNOWN"

    label_values = {v: (value_cases[v], value_voxels[v], meaning(v)) for v in sorted(value_cases)}
    for value in sorted(lmap.values):
        label_values.setdefault(value, (0, 0, lmap.values[value] + " (mapped, not seen)"))
    n = len(rows)
    completeness = {}
    for column in _COMPLETENESS_COLUMNS:
        known = 0
        for row in rows:
            value = getattr(row, column)
            known += not (value is None or value == "Unknown" or (isinstance(value, float) and math.isnan(value)))
        completeness[column] = known / n if n else 0.0
    counts: dict[str, dict[str, int]] = {}
    for column in _COUNT_COLUMNS:
        if column == "age_band":
            values = [str(b) for b in age_bands([r.age_years for r in rows], age_band_edges)]
        else:
            values = [str(getattr(r, column)) for r in rows]
        counts[column] = dict(collections.Counter(values))
    warnings = collections.Counter(w for r in rows for w in str(r.extra.get("metadata_warnings", "")).split("; ") if w)
    return SiteCheckReport(
        site=config.name,
        format=config.format,
        root=str(config.root),
        n_cases=n,
        n_checked=n_checked,
        failures=tuple(failures),
        site_error=site_error,
        label_values=label_values,
        completeness=completeness,
        counts=counts,
        orientations=dict(orientations),
        metadata_warnings=dict(warnings.most_common()),
        annotates=config.annotated_structures,
    )
