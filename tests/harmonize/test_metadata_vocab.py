"""Metadata vocabulary: raw site strings to canonical values (expected values written by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.harmonize.metadata import (
    MetadataError,
    harmonize_metadata,
    normalize_ethnicity,
    normalize_field_strength,
    normalize_race,
    normalize_sex,
    normalize_vendor,
    parse_age,
)
from audit.records import ETHNICITIES, RACES, VENDORS

VENDOR_CASES = [
    ("GE MEDICAL SYSTEMS", "GE"), ("GE", "GE"), ("GE HEALTHCARE", "GE"), ("SIEMENS", "Siemens"),
    ("Siemens Healthineers", "Siemens"), ("Philips Medical Systems", "Philips"), ("Philips Healthcare", "Philips"),
    ("TOSHIBA_MEC", "Canon"), ("Canon Medical Systems", "Canon"), ("Hitachi Medical Corporation", "Hitachi/Fujifilm"),
    ("FUJIFILM Healthcare", "Hitachi/Fujifilm"), ("UIH", "United Imaging"), ("United Imaging Healthcare", "United Imaging"),
    ("", "Unknown"), (None, "Unknown"), (float("nan"), "Unknown"), ("n/a", "Unknown"),
]


@pytest.mark.parametrize(("raw", "expected"), VENDOR_CASES, ids=[repr(r) for r, _ in VENDOR_CASES])
def test_normalize_vendor_maps_known_strings(raw, expected):
    warnings: list[str] = []
    assert normalize_vendor(raw, warnings=warnings) == expected
    assert expected in VENDORS
    assert warnings == []


def test_normalize_vendor_unmappable_is_other_and_reported():
    warnings: list[str] = []
    assert normalize_vendor("Esaote", warnings=warnings) == "Other"
    assert warnings == ["vendor: unmapped value 'Esaote' -> 'Other'"]


FIELD_CASES = [
    (1.494, 1.494, "1.5T"), (3, 3.0, "3T"), ("3.0T", 3.0, "3T"), ("1.5 T", 1.5, "1.5T"), (15000, 1.5, "1.5T"),
    ("30000 G", 3.0, "3T"), (0.55, 0.55, "other"), (7, 7.0, "other"), ("2,89", 2.89, "3T"),
]


@pytest.mark.parametrize(("raw", "tesla", "category"), FIELD_CASES, ids=[repr(c[0]) for c in FIELD_CASES])
def test_normalize_field_strength(raw, tesla, category):
    value, cat = normalize_field_strength(raw)
    np.testing.assert_allclose(value, tesla, rtol=0, atol=1e-12)
    assert cat == category


@pytest.mark.parametrize("raw", ["strong", "-3", "0"], ids=["text", "negative", "zero"])
def test_normalize_field_strength_unparseable_is_unknown_and_reported(raw):
    warnings: list[str] = []
    value, cat = normalize_field_strength(raw, warnings=warnings)
    assert math.isnan(value) and cat == "Unknown"
    assert len(warnings) == 1 and warnings[0].startswith("field_strength: unmapped value")


AGE_CASES = [
    ("045Y", None, 45.0, False), ("006M", None, 0.5, False), ("012W", None, 12 * 7 / 365.25, False),
    ("100D", None, 100 / 365.25, False), (54, None, 54.0, False), ("54.5", None, 54.5, False),
    ("45 years", None, 45.0, False), (">89", None, 90.0, True), ("90+", None, 90.0, True),
    ("", "Yes", 90.0, True), ("61", "No", 61.0, False), (None, None, float("nan"), False),
    ("Not Reported", None, float("nan"), False),
]


@pytest.mark.parametrize(("raw", "flag", "years", "redacted"), AGE_CASES, ids=[f"{c[0]!r}-{c[1]}" for c in AGE_CASES])
def test_parse_age(raw, flag, years, redacted):
    got, got_redacted = parse_age(raw, redacted=flag)
    np.testing.assert_allclose(got, years, rtol=0, atol=1e-9, equal_nan=True)
    assert got_redacted is redacted


@pytest.mark.parametrize("raw", ["forty", "200Y", -3, "45Q"], ids=["text", "too-old", "negative", "bad-unit"])
def test_parse_age_rejects_unparseable(raw):
    with pytest.raises(MetadataError, match="age"):
        parse_age(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("F", "F"), ("female", "F"), ("M", "M"), ("Male", "M"), ("m", "M"), ("O", "Other"), ("Other", "Other"), ("", "Unknown"), ("U", "Unknown")],
    ids=lambda v: repr(v),
)
def test_normalize_sex(raw, expected):
    assert normalize_sex(raw) == expected


def test_normalize_sex_unmappable_is_reported():
    warnings: list[str] = []
    assert normalize_sex("Q", warnings=warnings) == "Unknown"
    assert len(warnings) == 1


# CSpineSeg's published race strings (SOURCES.md) plus common synonyms.
RACE_CASES = [
    ("White", "White"), ("Black or African American", "Black or African American"), ("Asian", "Asian"),
    ("American Indian or Alaska Native", "American Indian or Alaska Native"),
    ("Native Hawaiian or other Pacific Islander", "Native Hawaiian or Other Pacific Islander"),
    ("Other", "Other"), ("Not Reported", "Unknown"), ("WHITE", "White"), ("Caucasian", "White"),
    ("African American", "Black or African American"), ("Two or more races", "More than one race"),
]


@pytest.mark.parametrize(("raw", "expected"), RACE_CASES, ids=[r for r, _ in RACE_CASES])
def test_normalize_race(raw, expected):
    warnings: list[str] = []
    assert normalize_race(raw, warnings=warnings) == expected
    assert expected in RACES and warnings == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Hispanic or Latino", "Hispanic or Latino"), ("Not Hispanic or Latino", "Not Hispanic or Latino"), ("Not Reported", "Unknown"),
     ("hispanic", "Hispanic or Latino"), ("Non-Hispanic", "Not Hispanic or Latino")],
    ids=lambda v: repr(v),
)
def test_normalize_ethnicity(raw, expected):
    assert normalize_ethnicity(raw) == expected and expected in ETHNICITIES


def test_unmappable_race_and_ethnicity_are_unknown_and_reported():
    warnings: list[str] = []
    assert normalize_race("Martian", warnings=warnings) == "Unknown"
    assert normalize_ethnicity("Klingon", warnings=warnings) == "Unknown"
    assert warnings == ["race: unmapped value 'Martian' -> 'Unknown'", "ethnicity: unmapped value 'Klingon' -> 'Unknown'"]


def test_harmonize_metadata_keeps_raw_values():
    out = harmonize_metadata({"vendor": "SIEMENS", "field_strength": 15000, "age": "045Y", "sex": "Female", "race": "Not Reported"})
    assert out["vendor"] == "Siemens" and out["vendor_raw"] == "SIEMENS"
    assert out["field_strength"] == "1.5T" and out["field_strength_raw"] == "15000" and out["field_strength_t_raw"] == "15000"
    assert out["age_years"] == 45.0 and out["age_years_raw"] == "045Y" and out["age_redacted"] is False
    assert out["sex"] == "F" and out["race"] == "Unknown" and out["race_raw"] == "Not Reported"
    assert out["ethnicity"] == "Unknown" and out["ethnicity_raw"] is None and out["scanner_model"] == "Unknown"


def test_harmonize_metadata_rejects_unknown_keys():
    with pytest.raises(ValueError, match="allowed keys"):
        harmonize_metadata({"manufacturer": "GE"})
