"""CT acquisition metadata as subgroup axes: kVp, slice thickness, reconstruction kernel, contrast.

The same vocabulary rules as :mod:`audit.harmonize.metadata` (whose ``normalize_vendor`` and
``normalize_scanner_model`` handle the manufacturer and model of a CT scanner too):

* a missing value (``None``, NaN, ``''``, ``'n/a'``, ``'Unknown'``, ...) becomes ``'Unknown'`` (numbers NaN)
  without a warning; a value that is present but cannot be mapped becomes ``'Other'`` (kernel) or
  ``'Unknown'`` (numbers) **with** a warning, so that no mapping is silent;
* every harmonized column keeps its raw twin (``kvp_raw``, ``kernel_raw``, ...).

Bands (also in ``docs/ct.md``):

* ``kvp_band``: ``<=90kVp``, ``100kVp`` (90, 110], ``120kVp`` (110, 125], ``>=130kVp`` (above 125);
* ``slice_thickness_band``: ``<=1mm``, ``1-2.5mm`` (1, 2.5], ``2.5-5mm`` (2.5, 5], ``>5mm``;
* ``kernel_class``: ``soft``, ``standard``, ``sharp``, ``lung``, ``Other``, ``Unknown``. Vendor-neutral keywords
  (GE ``SOFT``/``STANDARD``/``DETAIL``/``BONE``/``BONEPLUS``/``EDGE``/``LUNG``/``CHEST``; any name containing
  ``soft``, ``smooth``, ``standard``, ``sharp``, ``bone``, ``lung``) and the Siemens letter-number scheme
  (``B30f``, ``Br40d``, ``I70f``, ``Bl57``: a second letter ``l`` is a lung kernel; number < 30 soft, 30-49
  standard, >= 50 sharp). Philips letters (``A``, ``B``, ``YA``...) and Canon ``FC`` numbers carry no documented
  vendor-neutral sharpness here: they become ``Other`` with a warning, and the raw kernel stays in ``kernel``;
* ``contrast``: ``contrast`` when DICOM ContrastBolusAgent (0018,0010) or a sidecar value names an agent,
  ``non-contrast`` for ``none``/``no``/``non-contrast``/``false``, ``Unknown`` when absent (an absent tag does
  not prove a non-enhanced scan).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from audit.harmonize.metadata import _raw, _text, _warn
from audit.records import UNKNOWN

logger = logging.getLogger(__name__)

__all__ = [
    "CT_RAW_KEYS",
    "CT_COLUMNS",
    "KVP_BANDS",
    "SLICE_THICKNESS_BANDS",
    "KERNEL_CLASSES",
    "CONTRAST_VALUES",
    "normalize_kvp",
    "normalize_slice_thickness",
    "normalize_kernel",
    "normalize_contrast",
    "harmonize_ct_metadata",
    "ct_raw_from_dicom",
    "ct_raw_from_sidecar",
]

#: Keys that :func:`harmonize_ct_metadata` reads.
CT_RAW_KEYS: tuple[str, ...] = ("kvp", "slice_thickness", "kernel", "contrast")
#: Columns it writes (each with a ``<column>_raw`` twin for the four raw keys).
CT_COLUMNS: tuple[str, ...] = ("kvp", "kvp_band", "slice_thickness_mm", "slice_thickness_band", "kernel", "kernel_class", "contrast")
KVP_BANDS: tuple[str, ...] = ("<=90kVp", "100kVp", "120kVp", ">=130kVp", UNKNOWN)
SLICE_THICKNESS_BANDS: tuple[str, ...] = ("<=1mm", "1-2.5mm", "2.5-5mm", ">5mm", UNKNOWN)
KERNEL_CLASSES: tuple[str, ...] = ("soft", "standard", "sharp", "lung", "Other", UNKNOWN)
CONTRAST_VALUES: tuple[str, ...] = ("contrast", "non-contrast", UNKNOWN)

_NUMBER = re.compile(r"^\s*([+-]?\d+(?:[.,]\d*)?|[+-]?\.\d+)\s*(kvp|kv|mm)?\s*$", re.IGNORECASE)


def _number(value: Any, column: str, unit: str, warnings: list[str] | None) -> float:
    """A positive number from a number or a string (``'120'``, ``'120 kV'``, ``'2,5 mm'``); NaN when missing."""
    if isinstance(value, bool):
        _warn(warnings, column, value, UNKNOWN)
        return math.nan
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        number = float(value)
    else:
        text = _text(value)
        if text is None:
            return math.nan
        match = _NUMBER.match(text)
        if match is None or (match.group(2) and not match.group(2).lower().startswith(unit)):
            _warn(warnings, column, value, UNKNOWN)
            return math.nan
        number = float(match.group(1).replace(",", "."))
    if not (number > 0 and math.isfinite(number)):
        _warn(warnings, column, value, UNKNOWN)
        return math.nan
    return number


def normalize_kvp(value: Any, *, warnings: list[str] | None = None) -> tuple[float, str]:
    """Return ``(kvp, band)``; band in :data:`KVP_BANDS`.

    Examples
    --------
    >>> normalize_kvp("120")
    (120.0, '120kVp')
    >>> normalize_kvp(80)
    (80.0, '<=90kVp')
    >>> normalize_kvp(None)
    (nan, 'Unknown')
    """
    kvp = _number(value, "kvp", "kv", warnings)
    if math.isnan(kvp):
        return kvp, UNKNOWN
    if not 40 <= kvp <= 200:
        _warn(warnings, "kvp", value, UNKNOWN)
        return math.nan, UNKNOWN
    band = "<=90kVp" if kvp <= 90 else "100kVp" if kvp <= 110 else "120kVp" if kvp <= 125 else ">=130kVp"
    return kvp, band


def normalize_slice_thickness(value: Any, *, warnings: list[str] | None = None) -> tuple[float, str]:
    """Return ``(thickness_mm, band)``; band in :data:`SLICE_THICKNESS_BANDS`.

    Examples
    --------
    >>> normalize_slice_thickness("0.625")
    (0.625, '<=1mm')
    >>> normalize_slice_thickness(3)
    (3.0, '2.5-5mm')
    """
    mm = _number(value, "slice_thickness", "mm", warnings)
    if math.isnan(mm):
        return mm, UNKNOWN
    if mm > 20:
        _warn(warnings, "slice_thickness", value, UNKNOWN)
        return math.nan, UNKNOWN
    band = "<=1mm" if mm <= 1.0 else "1-2.5mm" if mm <= 2.5 else "2.5-5mm" if mm <= 5.0 else ">5mm"
    return mm, band


_KERNEL_WORDS: tuple[tuple[str, str], ...] = (
    (r"lung|chest", "lung"),
    (r"bone|edge|sharp", "sharp"),
    (r"soft|smooth", "soft"),
    (r"standard|^stnd$|^std$|detail|body", "standard"),
)
_SIEMENS = re.compile(r"^(?:[bihqjdtu])([a-z]?)(\d{2})[a-z]?$")


def normalize_kernel(value: Any, *, warnings: list[str] | None = None) -> tuple[str, str]:
    """Return ``(kernel, kernel_class)``: the kernel name as written and its class (:data:`KERNEL_CLASSES`).

    A multi-valued DICOM kernel (``['Br64d', '3']``, ``'Br64d\\\\3'``) keeps its first value.

    Examples
    --------
    >>> normalize_kernel("BONEPLUS")
    ('BONEPLUS', 'sharp')
    >>> normalize_kernel(["Br40d", "3"])
    ('Br40d', 'standard')
    >>> normalize_kernel("Bl57d")
    ('Bl57d', 'lung')
    """
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    text = _text(value)
    if text is None:
        return UNKNOWN, UNKNOWN
    name = text.split("\\")[0].strip()
    key = name.lower()
    siemens = _SIEMENS.match(key)
    if siemens:
        if siemens.group(1) == "l":
            return name, "lung"
        number = int(siemens.group(2))
        return name, "soft" if number < 30 else "standard" if number < 50 else "sharp"
    for pattern, kernel_class in _KERNEL_WORDS:
        if re.search(pattern, key):
            return name, kernel_class
    _warn(warnings, "kernel", value, "Other")
    return name, "Other"


_NO_CONTRAST = {"none", "no", "n", "non-contrast", "noncontrast", "non contrast", "without", "false", "0", "native", "unenhanced", "non-enhanced"}


def normalize_contrast(value: Any, *, warnings: list[str] | None = None) -> str:
    """Return ``'contrast'``, ``'non-contrast'`` or ``'Unknown'`` (absent).

    Examples
    --------
    >>> normalize_contrast("OMNIPAQUE 350")
    'contrast'
    >>> normalize_contrast("None")
    'non-contrast'
    >>> normalize_contrast(None)
    'Unknown'
    """
    if isinstance(value, bool):
        return "contrast" if value else "non-contrast"
    if isinstance(value, str) and value.strip().lower().replace("_", " ") in _NO_CONTRAST:
        return "non-contrast"  # checked first: 'None' in ContrastBolusAgent states that no agent was given
    text = _text(value)
    if text is None:
        return UNKNOWN
    key = text.lower().replace("_", " ").strip()
    if key in _NO_CONTRAST:
        return "non-contrast"
    if key in ("yes", "y", "true", "1", "contrast", "enhanced", "iv", "oral"):
        return "contrast"
    if re.search(r"[a-z]", key):  # an agent name (Omnipaque, Iomeron, 'IV contrast')
        return "contrast"
    _warn(warnings, "contrast", value, UNKNOWN)
    return UNKNOWN


def harmonize_ct_metadata(raw: Mapping[str, Any], *, warnings: list[str] | None = None) -> dict[str, Any]:
    """Harmonize one case's CT acquisition values (keys of :data:`CT_RAW_KEYS`; absent keys are missing).

    Returns
    -------
    dict
        :data:`CT_COLUMNS` plus ``kvp_raw``, ``slice_thickness_raw``, ``kernel_raw``, ``contrast_raw``.

    Examples
    --------
    >>> out = harmonize_ct_metadata({"kvp": "120", "slice_thickness": 1.25, "kernel": "B30f"})
    >>> out["kvp_band"], out["slice_thickness_band"], out["kernel_class"], out["contrast"]
    ('120kVp', '1-2.5mm', 'standard', 'Unknown')
    """
    unknown_keys = set(raw) - set(CT_RAW_KEYS)
    if unknown_keys:
        raise ValueError(f"harmonize_ct_metadata: allowed keys are {list(CT_RAW_KEYS)}; got unexpected {sorted(unknown_keys)}")
    kvp, kvp_band = normalize_kvp(raw.get("kvp"), warnings=warnings)
    mm, mm_band = normalize_slice_thickness(raw.get("slice_thickness"), warnings=warnings)
    kernel, kernel_class = normalize_kernel(raw.get("kernel"), warnings=warnings)
    out: dict[str, Any] = {
        "kvp": kvp,
        "kvp_band": kvp_band,
        "slice_thickness_mm": mm,
        "slice_thickness_band": mm_band,
        "kernel": kernel,
        "kernel_class": kernel_class,
        "contrast": normalize_contrast(raw.get("contrast"), warnings=warnings),
    }
    for key in CT_RAW_KEYS:
        value = raw.get(key)
        out[f"{key}_raw"] = _raw("\\".join(map(str, value)) if isinstance(value, (list, tuple)) else value)
    return out


#: DICOM keyword -> raw key (header values of a CT series).
_DICOM_KEYWORDS = {
    "Manufacturer": "vendor",
    "ManufacturerModelName": "scanner_model",
    "KVP": "kvp",
    "SliceThickness": "slice_thickness",
    "ConvolutionKernel": "kernel",
    "ContrastBolusAgent": "contrast",
}
#: BIDS / dcm2niix sidecar key -> raw key.
_SIDECAR_KEYS = {
    "Manufacturer": "vendor",
    "ManufacturersModelName": "scanner_model",
    "KVP": "kvp",
    "SliceThickness": "slice_thickness",
    "ConvolutionKernel": "kernel",
    "ContrastBolusAgent": "contrast",
}


def _split(found: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    general = {k: v for k, v in found.items() if k in ("vendor", "scanner_model")}
    ct = {k: v for k, v in found.items() if k in CT_RAW_KEYS}
    return general, ct


def ct_raw_from_dicom(dataset: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw values from a DICOM header (a pydicom ``Dataset`` or a mapping keyword -> value).

    Returns
    -------
    (general, ct) : tuple of dict
        ``general`` holds ``vendor`` and ``scanner_model`` (for :func:`audit.harmonize.metadata.harmonize_metadata`),
        ``ct`` the keys of :data:`CT_RAW_KEYS` (for :func:`harmonize_ct_metadata`). Absent tags are absent keys.
    """
    found: dict[str, Any] = {}
    for keyword, key in _DICOM_KEYWORDS.items():
        value = dataset.get(keyword) if isinstance(dataset, Mapping) else getattr(dataset, keyword, None)
        if value is not None:
            found[key] = list(value) if type(value).__name__ == "MultiValue" else value
    return _split(found)


def ct_raw_from_sidecar(sidecar: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw values from a BIDS / dcm2niix JSON sidecar (same return value as :func:`ct_raw_from_dicom`)."""
    if not isinstance(sidecar, Mapping):
        raise ValueError(f"ct_raw_from_sidecar: expected a JSON object; found {type(sidecar).__name__}")
    return _split({key: sidecar[k] for k, key in _SIDECAR_KEYS.items() if k in sidecar})
