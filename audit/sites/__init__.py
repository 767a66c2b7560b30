"""Site adapters: find the cases of a data site and stream harmonized manifest rows.

A site config (``sites/*.yaml``) names a ``format``; the adapter registered under that name finds images,
labels and raw metadata (:class:`RawCase`), and :func:`iter_site` harmonizes them into
:class:`~audit.records.ManifestRow` objects, yielding a :class:`~audit.records.CaseFailure` for each bad case.
Formats: ``nifti_table``, ``bids``, ``nnunet``, ``dicom``, ``cspineseg`` (see docs/sites.md).
"""

from __future__ import annotations

from audit.sites.base import Adapter, PathOutsideRootError, RawCase, SiteDataError, adapter_names, get_adapter, path_in_root, register_adapter
from audit.sites.check import SiteCheckReport, check_site
from audit.sites.config import SiteConfig, SiteConfigError, load_site_config, resolve_sites
from audit.sites.manifest import MANIFEST_EXTRA_COLUMNS, build_manifest, iter_site, metadata_warning_table

__all__ = [
    "Adapter",
    "PathOutsideRootError",
    "RawCase",
    "SiteConfig",
    "SiteConfigError",
    "SiteDataError",
    "SiteCheckReport",
    "MANIFEST_EXTRA_COLUMNS",
    "adapter_names",
    "build_manifest",
    "check_site",
    "get_adapter",
    "iter_site",
    "load_site_config",
    "resolve_sites",
    "metadata_warning_table",
    "path_in_root",
    "register_adapter",
]
