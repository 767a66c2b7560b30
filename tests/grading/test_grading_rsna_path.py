"""RSNA 2024 layout end to end: train.csv + a submission through the grading computation, checked against the
competition's scoring recipe written out here with pandas and scikit-learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from audit.grading.runner import GradingAudit, compute_grading
from audit.grading.tables import read_rsna_submission, read_rsna_train
from grading_builders import LABELS, rsna_study_tables

def test_rsna_tables_score_like_the_competition_metric():
    train, sub = rsna_study_tables(0)
    reference, failures = read_rsna_train(train)
    table = pd.concat([reference, read_rsna_submission(sub)], ignore_index=True)
    audit = dataclasses.replace(GradingAudit(), reference="reference", breakdowns=("level", "condition"), fairness_groups=(), criteria=())
    computed = compute_grading(table, audit)
    assert failures == [] and computed["failures"] == [] and len(computed["paired"]) == 12 * 25
    # the competition's recipe: solution rows {study}_{column}, one-hot truth, weights 1/2/4, log_loss per condition family
    solution = train.melt(id_vars="study_id", var_name="column", value_name="label")
    solution["row_id"] = solution["study_id"].astype(str) + "_" + solution["column"]
    solution["family"] = solution["column"].str.extract(r"(spinal|foraminal|subarticular)")[0]
    merged = solution.merge(sub, on="row_id")
    y = merged["label"].map({label: i for i, label in enumerate(LABELS)}).to_numpy()
    merged["w"] = np.array([1.0, 2.0, 4.0])[y]
    merged["y"] = y
    names = {"spinal": "spinal_canal_stenosis", "foraminal": "neural_foraminal_narrowing", "subarticular": "subarticular_stenosis"}
    for family, sub_rows in merged.groupby("family"):
        expected = skm.log_loss(sub_rows["y"], sub_rows[["normal_mild", "moderate", "severe"]].to_numpy(), sample_weight=sub_rows["w"], labels=[0, 1, 2])
        assert computed["rsna"]["per_condition"][names[family]] == pytest.approx(expected, rel=1e-12)
    spinal = merged[merged["family"] == "spinal"].assign(is_severe=lambda d: (d["y"] == 2).astype(int)).groupby("study_id")
    expected = skm.log_loss(spinal["is_severe"].max(), spinal["severe"].max(), sample_weight=spinal["w"].max(), labels=[0, 1])
    assert computed["rsna"]["any_severe_spinal"] == pytest.approx(expected, rel=1e-12)


def test_absent_fairness_group_makes_its_criterion_inconclusive():
    train, sub = rsna_study_tables(1)
    table = pd.concat([read_rsna_train(train)[0], read_rsna_submission(sub)], ignore_index=True)
    computed = compute_grading(table, dataclasses.replace(GradingAudit(), reference="reference", n_resamples=100))
    assert computed["criteria_status"] == {"severe-sensitivity-by-vendor": "inconclusive", "equalized-odds-by-sex": "inconclusive"}
