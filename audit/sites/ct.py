"""CT acquisition metadata for site adapters: DICOM headers and JSON sidecars to manifest extra columns.

The manufacturer and model of a CT scanner go through the general vocabulary (``vendor``, ``scanner_model``);
kVp, slice thickness, kernel and contrast become the extra manifest columns of
:data:`audit.harmonize.ct_metadata.CT_COLUMNS` (plus ``*_raw`` twins and ``ct_metadata_warnings``), usable as
subgroup axes in a protocol (``subgroups.columns: [site, vendor, kvp_band, kernel_class, contrast]``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.harmonize.ct_metadata import CT_RAW_KEYS, ct_raw_from_dicom, ct_raw_from_sidecar, harmonize_ct_metadata
from audit.sites.base import SiteDataError

logger = logging.getLogger(__name__)

__all__ = ["ct_extra", "ct_extra_from_raw", "read_sidecar", "CT_DEFAULT_KEYS"]

#: Keys a CT adapter's ``ct_defaults`` option may set for the whole site (e.g. ``contrast: non-contrast``).
CT_DEFAULT_KEYS = CT_RAW_KEYS


def ct_extra_from_raw(raw: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Harmonized CT extra columns from raw values (``defaults`` fill the keys ``raw`` lacks or leaves empty)."""
    merged = {k: raw.get(k) for k in CT_RAW_KEYS}
    for key, value in (defaults or {}).items():
        if key not in CT_RAW_KEYS:
            raise SiteDataError(f"options.ct_defaults: allowed keys are {list(CT_RAW_KEYS)}; found {key!r}")
        if merged.get(key) in (None, ""):
            merged[key] = value
    warnings: list[str] = []
    out = harmonize_ct_metadata(merged, warnings=warnings)
    out["ct_metadata_warnings"] = "; ".join(warnings)
    return out


def ct_extra(header: Any) -> dict[str, Any]:
    """CT extra columns of a DICOM header; an empty dict unless its Modality is ``CT``."""
    if str(getattr(header, "Modality", "") or "").upper() != "CT":
        return {}
    _, raw = ct_raw_from_dicom(header)
    return ct_extra_from_raw(raw)


def read_sidecar(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(general, ct)`` raw values of a JSON sidecar (both empty when the file does not exist).

    Raises
    ------
    ValueError
        If the file exists but is not a JSON object.
    """
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"sidecar {path.name}: not valid JSON ({exc})") from exc
    return ct_raw_from_sidecar(data)
