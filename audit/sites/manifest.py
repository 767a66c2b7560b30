"""From site configs to the manifest: harmonized rows streamed per site, then one validated table."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from audit.harmonize.metadata import RAW_KEYS, MetadataError, harmonize_metadata, is_missing
from audit.harmonize.privacy import PrivacyError, assert_no_identifiers, pseudonymize, pseudonymous_failure, pseudonymous_local_id
from audit.records import MANIFEST_COLUMNS, METADATA_COLUMNS, CaseFailure, ManifestRow, validate_manifest
from audit.sites.base import PathOutsideRootError, RawCase, check_case_id, get_adapter
from audit.sites.config import SiteConfig

logger = logging.getLogger(__name__)

__all__ = ["iter_site", "build_manifest", "manifest_row", "MANIFEST_EXTRA_COLUMNS", "metadata_warning_table"]

#: Columns added by the adapters besides ``MANIFEST_COLUMNS`` (always present, in this order).
MANIFEST_EXTRA_COLUMNS: tuple[str, ...] = (
    "label_map",
    *(f"{c}_raw" for c in METADATA_COLUMNS),
    "age_redacted",
    "metadata_warnings",
)


def manifest_row(config: SiteConfig, case: RawCase) -> ManifestRow:
    """Harmonize one raw case into a :class:`~audit.records.ManifestRow`.

    Site ``defaults`` fill metadata the case lacks; unmapped values are listed in the
    ``metadata_warnings`` column (``"; "``-separated).

    Raises
    ------
    MetadataError
        If the age cannot be parsed (unless the site option ``on_unparseable_age`` is ``unknown``).
    PrivacyError
        If pseudonymization is on and no key is set, or an extra column looks identifying.
    """
    raw: dict[str, Any] = {k: case.metadata.get(k) for k in RAW_KEYS}
    for key, value in config.defaults.items():
        if is_missing(raw.get(key)):
            raw[key] = value
    warnings: list[str] = []
    try:
        meta = harmonize_metadata(raw, warnings=warnings)
    except MetadataError as exc:
        if config.option("on_unparseable_age", "error") == "error":
            raise
        warnings.append(f"age: {exc}; set to Unknown")
        meta = harmonize_metadata({**raw, "age": None, "age_redacted": None}, warnings=warnings)
        meta["age_years_raw"] = None if raw.get("age") is None else str(raw.get("age"))
    patient = case.patient_id if case.patient_id and not is_missing(case.patient_id) else case.local_id
    local_id = case.local_id
    if config.option("pseudonymize", False):
        patient = pseudonymize(str(patient), namespace=config.name)
        local_id = pseudonymous_local_id(case.local_id, site=config.name)
    if case.extra:
        assert_no_identifiers(case.extra, where=f"site {config.name!r} extra columns")
    extra = {
        "label_map": config.label_map_name,
        **{f"{c}_raw": meta[f"{c}_raw"] for c in METADATA_COLUMNS},
        "age_redacted": bool(meta["age_redacted"]),
        "metadata_warnings": "; ".join(warnings),
        **dict(case.extra),
    }
    return ManifestRow(
        case_id=f"{config.name}/{local_id}",
        site=config.name,
        patient_id=str(patient),
        image_path=str(case.image_path),
        label_path=str(case.label_path),
        prediction_path=None,
        **{c: meta[c] for c in METADATA_COLUMNS},
        extra=extra,
    )


def iter_site(config: SiteConfig, *, failed_rows: bool = False) -> Iterator[ManifestRow | CaseFailure]:
    """Lazily yield the manifest rows and per-case failures of one site.

    A case the adapter found with its metadata but could not use (e.g. its label file is missing) yields its
    failure; with ``failed_rows`` its manifest row (metadata kept) comes first, so that it counts in Table 1,
    metadata completeness and its own groups instead of an ``Unknown`` one.

    Cheap checks only (files exist, metadata row present, ids unique, ages parse); voxel-level checks
    are :func:`audit.harmonize.checks.check_case`. A repeated ``case_id`` fails every occurrence after
    the first (adapters that can see all ids up front fail every occurrence).

    Raises
    ------
    SiteDataError
        For a problem with the whole site (missing metadata file, mapped column absent).
    """
    adapter = get_adapter(config.format)
    seen: set[str] = set()
    hide = bool(config.option("pseudonymize", False))  # then no raw case id leaves, not even in a failure
    for item in adapter.iter_cases(config):
        if isinstance(item, CaseFailure):
            yield pseudonymous_failure(item, config.name) if hide else item
            continue
        case_id = f"{config.name}/{item.local_id}"
        try:  # every adapter's ids: a local id also names prediction files, so it must be a safe relative path
            check_case_id(item.local_id)
        except PathOutsideRootError as exc:
            failure = CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            yield pseudonymous_failure(failure, config.name) if hide else failure
            continue
        if case_id in seen:
            failure = CaseFailure(case_id, "adapter", f"duplicate case id {case_id!r} in site {config.name!r}", "DuplicateCaseId", config.name)
            yield pseudonymous_failure(failure, config.name) if hide else failure
            continue
        seen.add(case_id)
        try:
            row = manifest_row(config, item)
        except (MetadataError, PrivacyError) as exc:  # a case failed for its files reports that first
            failure = item.failure or CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            yield pseudonymous_failure(failure, config.name) if hide else failure
            continue
        if item.failure is not None:
            if failed_rows:
                yield row
            yield pseudonymous_failure(item.failure, config.name) if hide else item.failure
            continue
        yield row


def build_manifest(configs: Sequence[SiteConfig]) -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Build the manifest of all sites.

    Returns
    -------
    manifest : pandas.DataFrame
        ``MANIFEST_COLUMNS`` + ``MANIFEST_EXTRA_COLUMNS`` + adapter extras, validated by
        :func:`audit.records.validate_manifest`; ``age_band`` is added later by the pipeline.
    failures : list of CaseFailure
        Per-case failures of the adapter stage (missing files or metadata, duplicate ids, bad ages). A case
        whose files are missing but whose metadata is known has both a manifest row and a failure.

    Raises
    ------
    ValueError
        If two configs share a site name.
    """
    names = [c.name for c in configs]
    dup = sorted(n for n, k in collections.Counter(names).items() if k > 1)
    if dup:
        raise ValueError(f"build_manifest: site names must be unique; repeated {dup}")
    rows: list[dict[str, Any]] = []
    failures: list[CaseFailure] = []
    for config in configs:
        n_before = len(rows)
        for item in iter_site(config, failed_rows=True):
            if isinstance(item, CaseFailure):
                failures.append(item)
            else:
                rows.append(item.as_dict())
        n_warn = sum(1 for r in rows[n_before:] if r["metadata_warnings"])
        if n_warn:
            logger.warning("site %s: %d case(s) with unmapped metadata values (see column metadata_warnings)", config.name, n_warn)
    columns = [*MANIFEST_COLUMNS, *MANIFEST_EXTRA_COLUMNS]
    table = pd.DataFrame(rows)
    for column in columns:
        if column not in table.columns:
            table[column] = pd.Series(dtype="float64" if column in ("field_strength_t", "age_years") else "object")
    table = table[columns + [c for c in table.columns if c not in columns]]
    if failures:
        logger.warning("build_manifest: %d case(s) failed in the adapters", len(failures))
    return validate_manifest(table), failures


def metadata_warning_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Tally of unmapped metadata values: columns ``site``, ``warning``, ``n_cases``."""
    if manifest.empty or "metadata_warnings" not in manifest:
        return pd.DataFrame(columns=["site", "warning", "n_cases"])
    pairs = [
        (site, w)
        for site, text in zip(manifest["site"], manifest["metadata_warnings"].fillna(""))
        for w in str(text).split("; ")
        if w
    ]
    if not pairs:
        return pd.DataFrame(columns=["site", "warning", "n_cases"])
    table = pd.DataFrame(pairs, columns=["site", "warning"])
    return table.value_counts().rename("n_cases").reset_index().sort_values(["site", "n_cases"], ascending=[True, False], ignore_index=True)
