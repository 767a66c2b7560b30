"""Patients follow CSpineSeg's published composition; cohorts balance sites and mark missing metadata."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from audit.synthetic import CSPINESEG_ETHNICITY, CSPINESEG_RACE, CSPINESEG_SEX, DEFAULT_SITES, draw_patients
from audit.synthetic.cohort import plan_cohort

N = 20000


@pytest.fixture(scope="module")
def many_patients():
    return draw_patients(np.random.default_rng(2024), N)


@pytest.mark.parametrize(
    ("attribute", "composition"),
    [("sex", CSPINESEG_SEX), ("race", CSPINESEG_RACE), ("ethnicity", CSPINESEG_ETHNICITY)],
    ids=["sex", "race", "ethnicity"],
)
def test_categorical_composition_matches_cspineseg(many_patients, attribute, composition) -> None:
    names = list(composition)
    observed = np.array([sum(getattr(p, attribute) == n for p in many_patients) for n in names])
    expected = np.array([composition[n] for n in names], dtype=float)
    expected = expected / expected.sum() * N
    assert observed.sum() == N
    assert stats.chisquare(observed, expected).pvalue > 1e-4
    # 4-sigma bound on every proportion
    p = expected / N
    np.testing.assert_array_less(np.abs(observed / N - p), 4 * np.sqrt(p * (1 - p) / N) + 1e-12)


def test_age_distribution(many_patients) -> None:
    ages = np.array([p.age_years for p in many_patients])
    assert ages.min() >= 18 and ages.max() <= 95
    assert abs(ages.mean() - 54.5) < 4 * 16.4 / np.sqrt(N) + 0.1  # +0.1: clipping at 18 shifts the mean up a little
    assert 15.8 < ages.std() < 16.6
    assert len({p.patient_id for p in many_patients}) == N


def test_plan_balances_sites_and_marks_missing_metadata() -> None:
    specs = plan_cohort(400, seed=0, sites=DEFAULT_SITES, repeat_fraction=0.1)
    first = [s for s in specs if s.patient.exam == 1]
    counts = [sum(s.site == p.name for s in first) for p in DEFAULT_SITES]
    assert max(counts) - min(counts) <= 1
    assert len(specs) == 400 and len(first) == 400 - round(400 * 0.1 / 1.1)
    missing = sum(len(s.missing) for s in specs) / (4 * len(specs))
    assert 0.01 < missing < 0.06  # each site's missing_rate is 0.03
    assert len({s.local_id for s in specs}) == len(specs)
