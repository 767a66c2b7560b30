"""Named builders of synthetic analysis tables with known truth for the statistics tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.protocol import StatisticsSettings, SubgroupSettings


def analysis_table_with_gap(
    n_patients: int = 40,
    *,
    gap: float = 0.0,
    groups: tuple[str, ...] = ("A", "B"),
    seed: int = 0,
    sd: float = 0.03,
    base: float = 0.88,
    exams_per_patient: tuple[int, ...] = (1,),
    patient_sd: float = 0.0,
    structure: str = "vertebral_body",
    metric: str = "dice",
) -> pd.DataFrame:
    """A long analysis table: ``n_patients`` per group on axis ``vendor``; the last group is ``gap`` lower.

    Each patient has a random number of exams from ``exams_per_patient`` and a patient effect of SD
    ``patient_sd`` shared by their exams (clustered data). Sites are crossed with groups.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for gi, group in enumerate(groups):
        shift = -gap if gi == len(groups) - 1 and len(groups) > 1 else 0.0
        for p in range(n_patients):
            patient_effect = rng.normal(0, patient_sd)
            for e in range(int(rng.choice(exams_per_patient))):
                rows.append(
                    {
                        "case_id": f"{group}-{p}-{e}",
                        "patient_id": f"{group}-{p}",
                        "site": f"site{(p % 3)}",
                        "vendor": group,
                        "sex": "F" if p % 2 else "M",
                        "age_years": 30.0 + p % 50,
                        "structure": structure,
                        "metric": metric,
                        "value": base + shift + patient_effect + rng.normal(0, sd),
                        "status": "ok",
                    }
                )
    return pd.DataFrame(rows)


def settings(**overrides) -> StatisticsSettings:
    """Fast default statistics settings for tests (adjusted model off unless asked)."""
    from audit.protocol import AdjustedModelSettings

    base = dict(bootstrap_iterations=200, seed=1, min_group_size=5, adjusted_model=AdjustedModelSettings(enabled=False))
    base.update(overrides)
    return StatisticsSettings(**base)


def vendor_axis() -> SubgroupSettings:
    return SubgroupSettings(columns=("vendor",), intersections=())
