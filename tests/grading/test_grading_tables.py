"""Grading table readers: the plain long table and the RSNA 2024 layout; bad grades become counted failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.errors import SiteDataError
from audit.grading.tables import DEEPSPINE_SCALE, RSNA_SCALE, read_long_table, read_rsna_submission, read_rsna_train


def rsna_train_two_studies() -> pd.DataFrame:
    """Two studies in the train.csv layout, one with an unknown grade and one empty (ungraded) cell."""
    return pd.DataFrame({
        "study_id": [4003253, 4646740],
        "spinal_canal_stenosis_l4_l5": ["Severe", "Normal/Mild"],
        "left_neural_foraminal_narrowing_l3_l4": ["Moderate", "Very bad"],
        "right_subarticular_stenosis_l5_s1": ["Normal/Mild", np.nan],
    })  # fmt: skip


def test_rsna_train_to_tidy_rows():
    table, failures = read_rsna_train(rsna_train_two_studies())
    got = {(r.case_id, r.level, r.condition, r.side): r.grade for r in table.itertuples()}
    assert got == {
        ("4003253", "L4-L5", "spinal_canal_stenosis", "none"): 2,
        ("4646740", "L4-L5", "spinal_canal_stenosis", "none"): 0,
        ("4003253", "L3-L4", "neural_foraminal_narrowing", "left"): 1,
        ("4003253", "L5-S1", "subarticular_stenosis", "right"): 0,
    }
    assert len(failures) == 1  # the unknown grade; the empty cell is "not graded", logged
    assert failures[0].case_id == "4646740" and failures[0].error_type == "UnknownGrade"
    assert failures[0].error.startswith("left_neural_foraminal_narrowing_l3_l4: allowed")  # the input column
    assert "allowed values are ['Normal/Mild', 'Moderate', 'Severe']" in failures[0].error and "'Very bad'" in failures[0].error


def test_rsna_train_rejects_an_unknown_column_naming_it():
    with pytest.raises(SiteDataError, match=r"column 'spinal_canal_stenosis_l6_l7' is not an RSNA grade column"):
        read_rsna_train(pd.DataFrame({"study_id": [1], "spinal_canal_stenosis_l6_l7": ["Severe"]}))


def test_rsna_submission_probabilities_and_argmax():
    sub = pd.DataFrame({"row_id": ["4003253_spinal_canal_stenosis_l4_l5", "4003253_left_neural_foraminal_narrowing_l3_l4"],
                        "normal_mild": [0.1, 0.7], "moderate": [0.3, 0.2], "severe": [0.6, 0.1]})  # fmt: skip
    table = read_rsna_submission(sub)
    assert table["grade"].tolist() == [2, 0]
    assert table["side"].tolist() == ["none", "left"]
    np.testing.assert_allclose(table[["p_0", "p_1", "p_2"]].to_numpy(), sub[["normal_mild", "moderate", "severe"]].to_numpy())


def test_probabilities_not_summing_to_one_are_an_error_naming_columns():
    sub = pd.DataFrame({"row_id": ["1_spinal_canal_stenosis_l4_l5"], "normal_mild": [0.5], "moderate": [0.5], "severe": [0.5]})
    with pytest.raises(SiteDataError, match=r"probability columns \['p_0', 'p_1', 'p_2'\] must be all empty or finite, >= 0 and sum to 1"):
        read_rsna_submission(sub)


def long_table_two_readers() -> pd.DataFrame:
    """Plain long table on the DeepSPINE 4-grade scale: two readers, integer and label grades, one unknown."""
    return pd.DataFrame({
        "case": ["c1", "c1", "c2", "c2"], "patient": ["p1", "p1", "p1", "p1"], "level": ["L4-L5"] * 4,
        "condition": ["spinal_canal_stenosis"] * 4, "side": ["none"] * 4, "reader": ["r1", "r2", "r1", "r2"],
        "grade": ["moderate", 3, "SEVERE", "grade 5"], "site": ["s1"] * 4,
    })  # fmt: skip


def test_long_table_codes_grades_keeps_metadata_and_counts_unknown():
    table, failures = read_long_table(long_table_two_readers(), scale=DEEPSPINE_SCALE)
    assert table["grade"].tolist() == [2, 3, 3]
    assert table["patient_id"].tolist() == ["p1"] * 3 and table["site"].tolist() == ["s1"] * 3
    assert [(f.case_id, f.site, f.stage) for f in failures] == [("c2", "s1", "grading")]
    assert "allowed values are ['none', 'mild', 'moderate', 'severe'] or codes 0..3; found 'grade 5'" in failures[0].error


def test_long_table_missing_column_and_duplicates_are_errors():
    with pytest.raises(SiteDataError, match=r"missing columns \['side'\]"):
        read_long_table(long_table_two_readers().drop(columns="side"))
    dup = pd.concat([long_table_two_readers().iloc[:1]] * 2)
    with pytest.raises(SiteDataError, match="repeat a"):
        read_long_table(dup, scale=DEEPSPINE_SCALE)


def test_grade_scale_codes():
    assert [RSNA_SCALE.code(v) for v in ("normal/mild", 2, 2.0, 3, "mild", True)] == [0, 2, 2, None, None, None]
