"""Metadata vocabulary: raw site strings to the canonical values of :mod:`audit.records`.

Every ``normalize_*`` function is pure: it takes one raw value and returns the canonical value.
A value that cannot be mapped becomes ``"Other"`` (vendor) or ``"Unknown"`` (sex, race, ethnicity,
field strength) and a message is appended to ``warnings`` when a list is passed, so that no mapping is
ever silent. :func:`harmonize_metadata` applies them all and keeps each raw value in a ``*_raw`` column.

Policies (also in ``docs/sites.md``):

* Missing values (``None``, NaN, ``""``, ``"n/a"``, ``"Not Reported"``, ``"Unknown"``, ...) become
  ``"Unknown"`` (numeric columns NaN) without a warning: a missing value is not an unmapped one.
* Field strength: numbers above 100 are read as gauss (15000 -> 1.5 T); 1.4 to 1.6 T is ``"1.5T"``,
  2.8 to 3.2 T is ``"3T"``, any other positive value is ``"other"``.
* Age: DICOM age strings (``'045Y'``, ``'006M'``, ``'012W'``, ``'100D'``), plain numbers, ``'45 y'``.
  Redacted ages (``'>89'``, ``'90+'``, or a ``*_gt89`` flag ``Yes``) become **90.0** with
  ``age_redacted = True``: 90 is the lower bound of the true age, so the case lands in the oldest age band.
  An unparseable age raises :class:`MetadataError` (the adapter turns it into a per-case failure).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from audit.records import ETHNICITIES, RACES, UNKNOWN

logger = logging.getLogger(__name__)

__all__ = [
    "MetadataError",
    "REDACTED_AGE_YEARS",
    "is_missing",
    "normalize_vendor",
    "normalize_field_strength",
    "parse_age",
    "normalize_sex",
    "normalize_race",
    "normalize_ethnicity",
    "normalize_scanner_model",
    "harmonize_metadata",
    "RAW_KEYS",
]

#: Age given to a redacted age (``'>89'``): the lower bound of the true age.
REDACTED_AGE_YEARS = 90.0

#: Keys that :func:`harmonize_metadata` reads from its raw mapping.
RAW_KEYS: tuple[str, ...] = ("vendor", "scanner_model", "field_strength", "age", "age_redacted", "sex", "race", "ethnicity")

_MISSING = {"", "n/a", "na", "nan", "none", "null", "unknown", "not reported", "not_reported", "unk", "missing", "-", "?",
            "declined", "refused", "prefer not to say", "not available", "unavailable"}


class MetadataError(ValueError):
    """A metadata value that cannot be interpreted and must fail its case (e.g. an unparseable age)."""


def _text(value: Any) -> str | None:
    """Return the stripped string of ``value`` or None when it is missing."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    text = str(value).strip()
    return None if text.lower() in _MISSING else text


def is_missing(value: Any) -> bool:
    """True for None, NaN and the strings that mean "not recorded" (``'n/a'``, ``'Not Reported'``, ...)."""
    return _text(value) is None


def _warn(warnings: list[str] | None, column: str, raw: Any, result: str) -> None:
    message = f"{column}: unmapped value {raw!r} -> {result!r}"
    logger.debug(message)
    if warnings is not None:
        warnings.append(message)


_VENDOR_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^ge\b|general electric|^gems\b|ge medical|ge healthcare|ge_medical", "GE"),
    (r"siemens", "Siemens"),
    (r"philips", "Philips"),
    (r"toshiba|canon", "Canon"),
    (r"hitachi|fujifilm|fuji film", "Hitachi/Fujifilm"),
    (r"united imaging|^uih\b|shanghai united", "United Imaging"),
)


def normalize_vendor(value: Any, *, warnings: list[str] | None = None) -> str:
    """Map a manufacturer string to a name of :data:`audit.records.VENDORS`.

    ``'GE MEDICAL SYSTEMS'`` -> ``'GE'``, ``'Siemens Healthineers'`` -> ``'Siemens'``,
    ``'TOSHIBA_MEC'`` -> ``'Canon'``; a missing value -> ``'Unknown'``; anything else -> ``'Other'``
    (with a warning).
    """
    text = _text(value)
    if text is None:
        return UNKNOWN
    key = re.sub(r"[_\-]+", " ", text.lower())
    for pattern, name in _VENDOR_PATTERNS:
        if re.search(pattern, key):
            return name
    if key == "other":
        return "Other"
    _warn(warnings, "vendor", value, "Other")
    return "Other"


_NUMBER = re.compile(r"^\s*([+-]?\d+(?:[.,]\d*)?|[+-]?\.\d+)\s*(t|tesla|g|gauss)?\s*$", re.IGNORECASE)


def normalize_field_strength(value: Any, *, warnings: list[str] | None = None) -> tuple[float, str]:
    """Return ``(field_strength_t, category)`` with category in ``('1.5T', '3T', 'other', 'Unknown')``.

    Accepts numbers in tesla (1.494, 3), strings (``'3.0T'``, ``'1.5 T'``) and gauss (15000, ``'30000 G'``).
    """
    text = _text(value)
    if text is None:
        return math.nan, UNKNOWN
    match = _NUMBER.match(text)
    if match is None:
        _warn(warnings, "field_strength", value, UNKNOWN)
        return math.nan, UNKNOWN
    number = float(match.group(1).replace(",", "."))
    unit = (match.group(2) or "").lower()
    if unit in ("g", "gauss") or (not unit and number > 100):
        number /= 10_000.0
    if not number > 0:
        _warn(warnings, "field_strength", value, UNKNOWN)
        return math.nan, UNKNOWN
    if 1.4 <= number <= 1.6:
        return number, "1.5T"
    if 2.8 <= number <= 3.2:
        return number, "3T"
    return number, "other"


_AGE_DICOM = re.compile(r"^(\d{1,3})\s*([DWMY])$", re.IGNORECASE)
_AGE_WORDS = re.compile(r"^(\d+(?:\.\d+)?)\s*(y|yr|yrs|year|years|m|mo|month|months|w|wk|weeks?|d|days?)?$", re.IGNORECASE)
_AGE_REDACTED = re.compile(r"^(>\s*=?\s*89|>\s*=?\s*90|90\s*\+|89\s*\+|90\s*or\s*older|over\s*89)$", re.IGNORECASE)
_UNIT_YEARS = {"d": 1 / 365.25, "w": 7 / 365.25, "m": 1 / 12, "y": 1.0}
_YES = {"yes", "y", "true", "1", "t"}
_NO = {"no", "n", "false", "0", "f"}


def parse_age(value: Any, *, redacted: Any = None) -> tuple[float, bool]:
    """Parse an age into ``(age_years, age_redacted)``.

    Parameters
    ----------
    value : Any
        ``'045Y'``, ``'006M'``, ``'012W'``, ``'100D'`` (DICOM AS), a number, ``'45 years'``, or a redacted
        age (``'>89'``, ``'90+'``). Missing values give ``(nan, False)``.
    redacted : Any, optional
        A separate flag such as CSpineSeg's ``age_at_index_gt89`` (``'Yes'``/``'No'``). ``'Yes'`` gives
        ``(90.0, True)`` whatever ``value`` holds.

    Raises
    ------
    MetadataError
        If ``value`` is present but not an age (text, negative, above 130 years) or ``redacted`` is not yes/no.
    """
    flag = _text(redacted)
    if flag is not None:
        if flag.lower() in _YES:
            return REDACTED_AGE_YEARS, True
        if flag.lower() not in _NO:
            raise MetadataError(f"age_redacted: expected Yes/No (or true/false); got {redacted!r}")
    if isinstance(value, bool):
        raise MetadataError(f"age: expected a number or a DICOM age string such as '045Y'; got {value!r}")
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        years = float(value)
    else:
        text = _text(value)
        if text is None:
            return math.nan, False
        if _AGE_REDACTED.match(text):
            return REDACTED_AGE_YEARS, True
        dicom = _AGE_DICOM.match(text)
        words = _AGE_WORDS.match(text.replace(",", "."))
        if dicom:
            years = int(dicom.group(1)) * _UNIT_YEARS[dicom.group(2).lower()]
        elif words:
            unit = (words.group(2) or "y").lower()[0]
            years = float(words.group(1)) * _UNIT_YEARS[unit]
        else:
            raise MetadataError(
                f"age: expected a number, a DICOM age string such as '045Y' or '006M', or a redacted age '>89'; got {value!r}"
            )
    if not (0.0 <= years <= 130.0) or math.isnan(years):
        raise MetadataError(f"age: expected 0 to 130 years; got {value!r}")
    return years, False


_SEX = {"f": "F", "female": "F", "woman": "F", "m": "M", "male": "M", "man": "M",
        "o": "Other", "other": "Other", "intersex": "Other", "x": "Other", "u": UNKNOWN}


def normalize_sex(value: Any, *, warnings: list[str] | None = None) -> str:
    """Map ``F/M/Female/male/O/Other`` (any case) to ``F``, ``M``, ``Other``; missing -> ``Unknown``."""
    text = _text(value)
    if text is None:
        return UNKNOWN
    result = _SEX.get(text.lower())
    if result is None:
        _warn(warnings, "sex", value, UNKNOWN)
        return UNKNOWN
    return result


_RACE_SYNONYMS = {
    "black": "Black or African American",
    "african american": "Black or African American",
    "black african american": "Black or African American",
    "caucasian": "White",
    "american indian": "American Indian or Alaska Native",
    "alaska native": "American Indian or Alaska Native",
    "native american": "American Indian or Alaska Native",
    "american indian alaska native": "American Indian or Alaska Native",
    "native hawaiian": "Native Hawaiian or Other Pacific Islander",
    "pacific islander": "Native Hawaiian or Other Pacific Islander",
    "native hawaiian other pacific islander": "Native Hawaiian or Other Pacific Islander",
    "more than one race": "More than one race",
    "multiracial": "More than one race",
    "multiple": "More than one race",
    "two more races": "More than one race",
    "mixed": "More than one race",
}


def _words(text: str) -> str:
    return " ".join(w for w in re.split(r"[\s_/,\-]+", text.lower()) if w and w not in ("or", "and"))


def _vocabulary_lookup(value: Any, vocabulary: tuple[str, ...], synonyms: dict[str, str], field: str, warnings: list[str] | None) -> str:
    """Match a free-text value to a vocabulary entry or a synonym (case, separators, "or"/"and" ignored);
    missing -> Unknown; unmappable -> Unknown with a warning."""
    text = _text(value)
    if text is None:
        return UNKNOWN
    key = _words(text)
    for entry in vocabulary:
        if key == _words(entry):
            return entry
    if key in synonyms:
        return synonyms[key]
    _warn(warnings, field, value, UNKNOWN)
    return UNKNOWN


def normalize_race(value: Any, *, warnings: list[str] | None = None) -> str:
    """Map a race string to an OMB category of :data:`audit.records.RACES`.

    Case, separators and "or"/"and" are ignored (``'Native Hawaiian or other Pacific Islander'`` matches);
    common synonyms (``'Caucasian'``, ``'African American'``) are accepted; ``'Not Reported'`` -> ``'Unknown'``;
    an unmappable string -> ``'Unknown'`` with a warning.
    """
    return _vocabulary_lookup(value, RACES, _RACE_SYNONYMS, "race", warnings)


_ETHNICITY_SYNONYMS = {
    "hispanic": "Hispanic or Latino",
    "latino": "Hispanic or Latino",
    "latina": "Hispanic or Latino",
    "latinx": "Hispanic or Latino",
    "hispanic latino": "Hispanic or Latino",
    "not hispanic": "Not Hispanic or Latino",
    "non hispanic": "Not Hispanic or Latino",
    "nonhispanic": "Not Hispanic or Latino",
    "non hispanic latino": "Not Hispanic or Latino",
    "not hispanic latino": "Not Hispanic or Latino",
}


def normalize_ethnicity(value: Any, *, warnings: list[str] | None = None) -> str:
    """Map an ethnicity string to :data:`audit.records.ETHNICITIES`; unmappable -> ``'Unknown'`` with a warning."""
    return _vocabulary_lookup(value, ETHNICITIES, _ETHNICITY_SYNONYMS, "ethnicity", warnings)


def normalize_scanner_model(value: Any) -> str:
    """Return the stripped model name (``'Prisma_fit'`` kept as written) or ``'Unknown'``."""
    text = _text(value)
    return UNKNOWN if text is None else text


def _raw(value: Any) -> str | None:
    """The raw value as a string for the ``*_raw`` column (None when absent)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def harmonize_metadata(raw: Mapping[str, Any], *, warnings: list[str] | None = None) -> dict[str, Any]:
    """Harmonize one case's raw metadata.

    Parameters
    ----------
    raw : Mapping[str, Any]
        Raw values under the keys of :data:`RAW_KEYS` (absent keys count as missing).
    warnings : list of str, optional
        Receives one message per unmapped value.

    Returns
    -------
    dict
        ``vendor``, ``field_strength_t``, ``field_strength``, ``scanner_model``, ``age_years``, ``sex``,
        ``race``, ``ethnicity``, ``age_redacted``, and for each harmonized column a ``<column>_raw`` twin
        (``field_strength_t_raw`` and ``field_strength_raw`` both hold the raw field strength).

    Raises
    ------
    MetadataError
        If the age cannot be parsed.
    """
    unknown_keys = set(raw) - set(RAW_KEYS)
    if unknown_keys:
        raise ValueError(f"harmonize_metadata: allowed keys are {list(RAW_KEYS)}; got unexpected {sorted(unknown_keys)}")
    get = raw.get
    field_t, field_cat = normalize_field_strength(get("field_strength"), warnings=warnings)
    age, redacted = parse_age(get("age"), redacted=get("age_redacted"))
    out: dict[str, Any] = {
        "vendor": normalize_vendor(get("vendor"), warnings=warnings),
        "field_strength_t": field_t,
        "field_strength": field_cat,
        "scanner_model": normalize_scanner_model(get("scanner_model")),
        "age_years": age,
        "sex": normalize_sex(get("sex"), warnings=warnings),
        "race": normalize_race(get("race"), warnings=warnings),
        "ethnicity": normalize_ethnicity(get("ethnicity"), warnings=warnings),
        "age_redacted": redacted,
    }
    raw_of = {"field_strength_t": "field_strength", "age_years": "age"}
    for column in ("vendor", "field_strength_t", "field_strength", "scanner_model", "age_years", "sex", "race", "ethnicity"):
        out[f"{column}_raw"] = _raw(get(raw_of.get(column, column)))
    return out
