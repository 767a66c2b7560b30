"""Session fixtures for the synthetic-cohort tests (measurement helpers live in synth_measure.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.synthetic import PlantedEffects, generate_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-case planted cohort written once per session."""
    out = tmp_path_factory.mktemp("synthetic") / "cohort"
    generate_cohort(out, n_cases=24, seed=7, planted=PlantedEffects())
    return out
