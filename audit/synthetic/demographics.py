"""Synthetic patients drawn from CSpineSeg's published composition, and site-flavoured metadata rows.

Composition (1,232 patients; ``../shared/data/SOURCES.md``): race White 795, Black or African American 342,
Not Reported 33, Other 28, Asian 24, American Indian or Alaska Native 9, Native Hawaiian or other Pacific
Islander 1; sex Female 675, Male 557; ethnicity Not Hispanic or Latino 1,141, Hispanic or Latino 58,
Not Reported 33; age 54.5 +/- 16.4 years (drawn normal, clipped to 18-95).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from audit.synthetic.profiles import SiteProfile

logger = logging.getLogger(__name__)

__all__ = [
    "NOT_REPORTED",
    "CSPINESEG_RACE",
    "CSPINESEG_SEX",
    "CSPINESEG_ETHNICITY",
    "CSPINESEG_AGE_MEAN",
    "CSPINESEG_AGE_SD",
    "Patient",
    "draw_patients",
    "metadata_row",
]

NOT_REPORTED = "Not Reported"

CSPINESEG_RACE: Mapping[str, int] = MappingProxyType(
    {
        "White": 795,
        "Black or African American": 342,
        NOT_REPORTED: 33,
        "Other": 28,
        "Asian": 24,
        "American Indian or Alaska Native": 9,
        "Native Hawaiian or other Pacific Islander": 1,
    }
)
CSPINESEG_SEX: Mapping[str, int] = MappingProxyType({"F": 675, "M": 557})
CSPINESEG_ETHNICITY: Mapping[str, int] = MappingProxyType(
    {"Not Hispanic or Latino": 1141, "Hispanic or Latino": 58, NOT_REPORTED: 33}
)
CSPINESEG_AGE_MEAN = 54.5
CSPINESEG_AGE_SD = 16.4
AGE_RANGE = (18.0, 95.0)


@dataclasses.dataclass(frozen=True)
class Patient:
    """One exam's patient: latent truth (never written as such to metadata.csv).

    Parameters
    ----------
    patient_id : str
        Pseudonymous id (``"P0001"``); repeated exams share it.
    age_years : float
        True age at this exam.
    sex : {"F", "M"}
    race, ethnicity : str
        CSpineSeg vocabulary (``"Not Reported"`` is a drawn category, as in CSpineSeg).
    anatomy_seed : int
        Seed of the patient's anatomy, shared by all exams of the patient.
    exam : int
        1 for the first exam, 2 for a repeat.
    """

    patient_id: str
    age_years: float
    sex: str
    race: str
    ethnicity: str
    anatomy_seed: int
    exam: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for cohort.json)."""
        return dataclasses.asdict(self)


def _draw(rng: np.random.Generator, composition: Mapping[str, int], n: int) -> list[str]:
    names = list(composition)
    p = np.array([composition[k] for k in names], dtype=float)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def draw_patients(rng: np.random.Generator, n: int, *, first_id: int = 1) -> list[Patient]:
    """Draw ``n`` independent patients (first exams) from CSpineSeg's composition.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n : int
        Number of patients.
    first_id : int
        Number of the first patient id (``P0001``).
    """
    if n < 0:
        raise ValueError(f"draw_patients: n must be >= 0; got {n!r}")
    ages = np.clip(rng.normal(CSPINESEG_AGE_MEAN, CSPINESEG_AGE_SD, size=n), *AGE_RANGE)
    sexes = _draw(rng, CSPINESEG_SEX, n)
    races = _draw(rng, CSPINESEG_RACE, n)
    ethnicities = _draw(rng, CSPINESEG_ETHNICITY, n)
    seeds = rng.integers(0, 2**31 - 1, size=n)
    return [
        Patient(
            patient_id=f"P{first_id + i:04d}",
            age_years=round(float(ages[i]), 1),
            sex=sexes[i],
            race=races[i],
            ethnicity=ethnicities[i],
            anatomy_seed=int(seeds[i]),
        )
        for i in range(n)
    ]


def _format_age(age: float, profile: SiteProfile) -> Any:
    d = profile.dialect
    if d.redact_over_89 and age > 89:
        return d.redacted_token
    if d.age_format == "dicom":
        return f"{int(age):03d}Y"
    if d.age_format == "int":
        return int(age)
    return round(float(age), 1)


def metadata_row(patient: Patient, profile: SiteProfile, local_id: str, missing: Mapping[str, bool]) -> dict[str, Any]:
    """One row of a site's metadata.csv, written in the site's dialect.

    Parameters
    ----------
    patient : Patient
        Latent truth of the exam.
    profile : SiteProfile
        The site (vendor strings, field strength as stored, dialect).
    local_id : str
        The case's id inside the site (file stem of image and label).
    missing : Mapping[str, bool]
        Which of ``age``, ``sex``, ``race``, ``ethnicity`` the site failed to record.

    Returns
    -------
    dict
        Site column name -> raw value.
    """
    d = profile.dialect
    sex_words = dict(d.sex_values)
    values: dict[str, Any] = {
        "case_id": local_id,
        "patient_id": patient.patient_id,
        "vendor": profile.vendor_raw,
        "scanner_model": profile.scanner_model,
        "field_strength": profile.field_strength_raw,
        "age": _format_age(patient.age_years, profile),
        "sex": sex_words.get(patient.sex, patient.sex),
        "race": d.missing if patient.race == NOT_REPORTED else patient.race,
        "ethnicity": d.missing if patient.ethnicity == NOT_REPORTED else patient.ethnicity,
    }
    for key, is_missing in missing.items():
        if is_missing:
            values[key] = d.missing
    cols = d.column_map
    return {cols[k]: v for k, v in values.items()}
