"""Manifest and metric-table contracts."""

from __future__ import annotations

import pandas as pd
import pytest

from audit.records import (
    MANIFEST_COLUMNS,
    CaseFailure,
    ManifestRow,
    failed_case_rows,
    failure_table,
    validate_manifest,
    validate_metric_table,
)


def two_case_manifest() -> pd.DataFrame:
    rows = [
        ManifestRow(case_id="A/1", site="A", patient_id="P1", image_path="i1", label_path="l1", vendor="GE", sex="F").as_dict(),
        ManifestRow(case_id="A/2", site="A", patient_id="P2", image_path="i2", label_path="l2", age_years=45.0).as_dict(),
    ]
    return pd.DataFrame(rows)


def test_valid_manifest_passes_and_keeps_unknowns():
    manifest = validate_manifest(two_case_manifest())
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert manifest.loc[1, "vendor"] == "Unknown" and manifest.loc[0, "age_years"] != manifest.loc[0, "age_years"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.drop(columns=["sex"]), r"missing columns \['sex'\]"),
        (lambda m: m.assign(case_id=["A/1", "A/1"]), r"case_id must be unique; repeated values \['A/1'\]"),
        (lambda m: m.assign(vendor=["GE", "Toshiba"]), r"column 'vendor' allows .*found \['Toshiba'\]"),
        (lambda m: m.assign(race=[None, "White"]), r"column 'race' has missing values; use 'Unknown'"),
    ],
    ids=["missing-column", "duplicate-id", "vendor-vocabulary", "missing-not-unknown"],
)
def test_manifest_errors_name_column_and_values(mutate, message):
    with pytest.raises(ValueError, match=message):
        validate_manifest(mutate(two_case_manifest()))


def test_failed_rows_keep_the_case_visible():
    rows = failed_case_rows("A/1", ["vertebral_body", "intervertebral_disc"], ["dice", "hd95"], "corrupt gzip")
    assert len(rows) == 4 and set(rows["status"]) == {"failed"} and rows["value"].isna().all()
    validate_metric_table(rows)  # NaN is allowed for failed rows only


def test_silent_nan_in_metric_table_is_rejected():
    rows = failed_case_rows("A/1", ["vertebral_body"], ["dice"], "x").assign(status="ok", error="")
    with pytest.raises(ValueError, match="NaN values are allowed only for status failed/both_empty"):
        validate_metric_table(rows)


def test_failure_from_exception_keeps_type_and_message():
    failure = CaseFailure.from_exception("B/7", "inference", MemoryError("out of memory"), site="B")
    table = failure_table([failure])
    assert table.to_dict("records") == [{"case_id": "B/7", "site": "B", "stage": "inference", "error_type": "MemoryError", "error": "out of memory"}]
