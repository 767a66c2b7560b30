"""Named builders of grading test inputs (imported by the grading tests; pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.grading.tables import RSNA_CONDITIONS, RSNA_LEVELS

PROBS = ["p_0", "p_1", "p_2"]

LABELS = ["Normal/Mild", "Moderate", "Severe"]


def rsna_study_tables(seed: int, n_studies: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random train.csv (all 25 columns) and a Dirichlet submission for the same studies."""
    rng = np.random.default_rng(seed)
    columns = [f"{c}_{lv}" for c in RSNA_CONDITIONS for lv in RSNA_LEVELS]
    train = pd.DataFrame({"study_id": np.arange(1000, 1000 + n_studies)})
    for col in columns:
        train[col] = rng.choice(LABELS, n_studies, p=[0.6, 0.3, 0.1])
    rows = [(f"{s}_{col}", *rng.dirichlet([2, 1, 1])) for s in train["study_id"] for col in columns]
    return train, pd.DataFrame(rows, columns=["row_id", "normal_mild", "moderate", "severe"])
