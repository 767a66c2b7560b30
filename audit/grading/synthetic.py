"""A synthetic stenosis-grading cohort with planted site and group effects (the demo and the tests).

Each patient has one lumbar MRI (case = patient) graded at five disc levels for central canal stenosis and
left/right foraminal narrowing on the RSNA 3-grade scale. A latent severity per level (patient frailty +
level effect + age) is cut into the true grade. Two readers grade the truth with independent off-by-one
errors (``reader_1`` is the reference standard, ``reader_2`` a second reader). The model's probabilities
come from an ordinal logistic model of a noisy copy of the latent severity. Planted effects:

* **site effect**: at :data:`UNDERCALL_SITE` the model moves :data:`UNDERCALL_SHARE` of the severe
  probability to moderate, so it under-calls severe stenosis there;
* **group effect**: for sex ``F`` the model's latent severity is shifted up by :data:`FEMALE_SHIFT`, so it
  over-calls >= moderate (a higher false-positive rate: an equalized-odds gap by sex).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from audit.grading.tables import RSNA_LEVELS, RSNA_SCALE, probability_columns

logger = logging.getLogger(__name__)

__all__ = ["GradingCohortSpec", "SITES", "UNDERCALL_SITE", "UNDERCALL_SHARE", "FEMALE_SHIFT", "make_grading_cohort"]

#: site -> vendor; vendor is site-level (a vendor comparison here is a site comparison).
SITES: dict[str, str] = {"site-A": "GE", "site-B": "Siemens", "site-C": "Philips", "site-D": "Canon"}
UNDERCALL_SITE = "site-C"
UNDERCALL_SHARE = 0.45
FEMALE_SHIFT = 0.2
_CUTS = (1.0, 2.0)  # latent severity cut points: < 1 normal/mild, < 2 moderate, else severe
_LEVEL_EFFECT = {"L1-L2": -0.6, "L2-L3": -0.3, "L3-L4": 0.1, "L4-L5": 0.5, "L5-S1": 0.2}
_CONDITIONS = (("spinal_canal_stenosis", "none"), ("neural_foraminal_narrowing", "left"), ("neural_foraminal_narrowing", "right"))


@dataclasses.dataclass(frozen=True)
class GradingCohortSpec:
    """Size and noise of the synthetic grading cohort."""

    n_patients: int = 320
    seed: int = 7
    reader_error: tuple[float, float] = (0.02, 0.12)  # off-by-one rate of reader_1, reader_2
    model_noise_sd: float = 0.1
    model_scale: float = 0.15


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_grading_cohort(spec: GradingCohortSpec = GradingCohortSpec()) -> pd.DataFrame:
    """The cohort as a plain long table (``case``, ``patient``, ``level``, ``condition``, ``side``, ``reader``,
    ``grade``, ``p_0``..``p_2`` on model rows, ``site``, ``vendor``, ``sex``, ``age_years``).

    Examples
    --------
    >>> t = make_grading_cohort(GradingCohortSpec(n_patients=8))
    >>> sorted(t["reader"].unique()), len(t) == 8 * 5 * 3 * 3
    (['model', 'reader_1', 'reader_2'], True)
    """
    if spec.n_patients < 8:
        raise ValueError(f"n_patients: must be at least 8 (two per site); found {spec.n_patients}")
    rng = np.random.default_rng(spec.seed)
    sites = np.array(list(SITES))[np.arange(spec.n_patients) % len(SITES)]
    patients = pd.DataFrame({"patient": [f"{s}-{i:03d}" for i, s in enumerate(sites)], "site": sites, "vendor": [SITES[s] for s in sites],
                             "sex": rng.choice(["F", "M"], spec.n_patients), "age_years": np.round(rng.uniform(30, 85, spec.n_patients))})  # fmt: skip
    frailty = rng.normal(0.0, 0.6, spec.n_patients)
    rows = []
    for (condition, side), level in ((c, lv) for c in _CONDITIONS for lv in RSNA_LEVELS.values()):
        latent = 0.9 + frailty + _LEVEL_EFFECT[level] + 0.015 * (patients["age_years"].to_numpy() - 55) + rng.normal(0, 0.5, spec.n_patients)
        truth = np.searchsorted(np.array(_CUTS), latent, side="right")
        for r, err in enumerate(spec.reader_error, start=1):
            flip = rng.random(spec.n_patients) < err
            step = np.where(truth == 0, 1, np.where(truth == 2, -1, rng.choice([-1, 1], spec.n_patients)))
            rows.append(patients.assign(level=level, condition=condition, side=side, reader=f"reader_{r}", grade=np.where(flip, truth + step, truth)))
        seen = latent + rng.normal(0, spec.model_noise_sd, spec.n_patients) + FEMALE_SHIFT * (patients["sex"].to_numpy() == "F")
        ge1, ge2 = _sigmoid((seen - _CUTS[0]) / spec.model_scale), _sigmoid((seen - _CUTS[1]) / spec.model_scale)
        proba = np.column_stack([1.0 - ge1, np.clip(ge1 - ge2, 0.0, None), ge2])
        proba /= proba.sum(axis=1, keepdims=True)
        under = patients["site"].to_numpy() == UNDERCALL_SITE
        moved = UNDERCALL_SHARE * proba[:, 2] * under
        proba[:, 1] += moved
        proba[:, 2] -= moved
        model = patients.assign(level=level, condition=condition, side=side, reader="model", grade=proba.argmax(axis=1))
        for i, col in enumerate(probability_columns(RSNA_SCALE)):
            model[col] = proba[:, i]
        rows.append(model)
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "case", out["patient"])
    return out
