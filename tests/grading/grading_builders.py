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


def null_paired_cohort(seed: int, n_patients: int = 120, n_levels: int = 4) -> pd.DataFrame:
    """Paired levels (``patient_id``, ``grade_ref``, ``grade_model``, ``group``) with NO group effect.

    Levels of a patient share a frailty (sd 1; level noise sd 0.7), so they are correlated; the group (a or b,
    probability 1/2) is drawn per patient and plays no part in the grades: every gap is a planted null.
    """
    rng = np.random.default_rng(seed)
    latent = np.repeat(rng.normal(0.0, 1.0, n_patients), n_levels) + rng.normal(0.0, 0.7, n_patients * n_levels)
    return pd.DataFrame({
        "patient_id": np.repeat(np.arange(n_patients), n_levels).astype(str),
        "grade_ref": np.digitize(latent, [0.3, 1.3]), "grade_model": np.digitize(latent + rng.normal(0.0, 0.6, latent.size), [0.3, 1.3]),
        "group": np.repeat(rng.choice(["a", "b"], n_patients), n_levels),
    })  # fmt: skip


def two_proportion_cohort(seed: int, n_a: int = 400, n_b: int = 300, p_a: float = 0.5, p_b: float = 0.35) -> pd.DataFrame:
    """One level per patient; every reference grade positive; the model calls >= moderate with probability p_a / p_b.

    The TPR gap b - a is then a difference of two independent binomial proportions (statsmodels' two-sample Wald).
    """
    rng = np.random.default_rng(seed)
    group = np.array(["a"] * n_a + ["b"] * n_b)
    pred = rng.random(group.size) < np.where(group == "a", p_a, p_b)
    return pd.DataFrame({"patient_id": np.arange(group.size).astype(str), "grade_ref": 1, "grade_model": pred.astype(int), "group": group})


def rater_table(seed: int, n_patients: int = 600, levels_per_patient: int = 1, readers: int = 1) -> pd.DataFrame:
    """Tidy grading table (reader_1 .. reader_r and the model) on a 3-grade scale; readers and model are noisy copies
    of a true grade (reader off by one grade with probability 0.2, the model 0.3)."""
    rng = np.random.default_rng(seed)
    n = n_patients * levels_per_patient
    truth = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    raters = {f"reader_{i + 1}": np.clip(truth + rng.choice([-1, 0, 1], n, p=[0.1, 0.8, 0.1]), 0, 2) for i in range(readers)}
    raters["model"] = np.clip(truth + rng.choice([-1, 0, 1], n, p=[0.15, 0.7, 0.15]), 0, 2)
    frames = [pd.DataFrame({"case_id": np.repeat(np.arange(n_patients), levels_per_patient).astype(str),
                            "patient_id": np.repeat(np.arange(n_patients), levels_per_patient).astype(str),
                            "level": np.tile(list(RSNA_LEVELS.values())[:levels_per_patient], n_patients), "condition": "spinal_canal_stenosis",
                            "side": "none", "reader": name, "grade": grades})  # fmt: skip
              for name, grades in raters.items()]
    return pd.concat(frames, ignore_index=True)


def rsna_series_table(study_ids, *, lacking: dict | None = None, extra_description: bool = False) -> pd.DataFrame:
    """train_series_descriptions.csv for ``study_ids``: the three RSNA series each, except ``lacking`` {study: description}
    (that series left out); with ``extra_description`` one more 'Coronal T2' series for the first study (not an RSNA series)."""
    lacking = lacking or {}
    rows = [(s, 100 * s + i, d) for s in study_ids for i, d in enumerate(["Sagittal T1", "Sagittal T2/STIR", "Axial T2"]) if lacking.get(s) != d]
    if extra_description:
        rows.append((study_ids[0], 99, "Coronal T2"))
    return pd.DataFrame(rows, columns=["study_id", "series_id", "series_description"])


#: Raw site spellings of the RSNA metadata fixture (the harmonized value is the second item).
RAW_VENDORS = [("SIEMENS", "Siemens"), ("GE MEDICAL SYSTEMS", "GE"), ("Philips Healthcare", "Philips")]


def rsna_metadata_table(study_ids, *, bad_age_study=None, without=()) -> pd.DataFrame:
    """A metadata table per study in raw site vocabulary: site by study order (3 sites), vendor spelled as the scanner
    writes it (:data:`RAW_VENDORS`), field strength in tesla or gauss, DICOM ages, sex words; ``bad_age_study`` gets the
    age 'abc' (unparseable: a metadata failure); studies in ``without`` have no row."""
    rows = []
    for i, s in enumerate(study_ids):
        if s in without:
            continue
        raw_vendor = RAW_VENDORS[i % 3][0]
        rows.append({"study_id": s, "site": f"site-{'ABC'[i % 3]}", "vendor": raw_vendor, "field_strength": ["1.5", "30000", "3T"][i % 3],
                     "age": "abc" if s == bad_age_study else f"{35 + 7 * i:03d}Y", "sex": ["female", "M"][i % 2], "race": "Not Reported"})  # fmt: skip
    return pd.DataFrame(rows)
