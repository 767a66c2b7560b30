"""Readers that turn grading tables into one tidy long table of ordinal grades.

The tidy grading table has one row per (case, level, condition, side, reader):
``case_id``, ``patient_id``, ``level``, ``condition``, ``side``, ``reader``, ``grade`` (int, 0..k-1 on the
table's :class:`GradeScale`) and, when the source gives class probabilities, ``p_0`` .. ``p_{k-1}``.
Extra case-level columns (site, vendor, sex, ...) are kept. A row whose grade is not on the scale is not
raised and not dropped silently: it becomes a :class:`~audit.records.CaseFailure` (stage ``"grading"``)
returned beside the table, and the report counts it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import SiteDataError
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = [
    "GradeScale",
    "RSNA_SCALE",
    "DEEPSPINE_SCALE",
    "GRADING_COLUMNS",
    "LONG_TABLE_COLUMNS",
    "RSNA_CONDITIONS",
    "RSNA_LEVELS",
    "probability_columns",
    "read_long_table",
    "read_rsna_train",
    "read_rsna_submission",
]

#: Columns of the tidy grading table, before the optional probability columns ``p_0`` .. ``p_{k-1}``.
GRADING_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "level", "condition", "side", "reader", "grade")
#: Required columns of a plain long input table (``reader``, ``patient_id`` and ``p_*`` are optional).
LONG_TABLE_COLUMNS: tuple[str, ...] = ("case", "level", "condition", "side", "grade")
#: Probability columns must sum to 1 within this tolerance.
PROBABILITY_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class GradeScale:
    """An ordered grading scale.

    Parameters
    ----------
    labels : tuple of str
        Grade names from least to most severe; a grade is stored as its index.
    positive_from : int
        Index of the first grade counted positive when grades are binarized (">= moderate").
    severe : int
        Index of the severe grade (for severe-stenosis sensitivity).

    Examples
    --------
    >>> RSNA_SCALE.code("moderate"), RSNA_SCALE.code("Normal/Mild")
    (1, 0)
    """

    labels: tuple[str, ...]
    positive_from: int
    severe: int

    @property
    def n_grades(self) -> int:
        return len(self.labels)

    def code(self, value: object) -> int | None:
        """The index of ``value`` (a label, case-insensitive, or an integer code); None when not on the scale."""
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value) if 0 <= int(value) < self.n_grades else None
        if isinstance(value, float) and value.is_integer() and 0 <= value < self.n_grades:
            return int(value)
        text = str(value).strip().lower()
        for i, label in enumerate(self.labels):
            if text == label.lower():
                return i
        return None


#: RSNA 2024 lumbar spine degenerative classification: Normal/Mild, Moderate, Severe.
RSNA_SCALE = GradeScale(labels=("Normal/Mild", "Moderate", "Severe"), positive_from=1, severe=2)
#: DeepSPINE (Lu et al. 2018): none, mild, moderate, severe.
DEEPSPINE_SCALE = GradeScale(labels=("none", "mild", "moderate", "severe"), positive_from=2, severe=3)

#: RSNA 2024 train.csv column prefixes -> (condition, side).
RSNA_CONDITIONS: dict[str, tuple[str, str]] = {
    "spinal_canal_stenosis": ("spinal_canal_stenosis", "none"),
    "left_neural_foraminal_narrowing": ("neural_foraminal_narrowing", "left"),
    "right_neural_foraminal_narrowing": ("neural_foraminal_narrowing", "right"),
    "left_subarticular_stenosis": ("subarticular_stenosis", "left"),
    "right_subarticular_stenosis": ("subarticular_stenosis", "right"),
}
#: RSNA 2024 level suffixes -> canonical disc level names (audit.ontology spelling).
RSNA_LEVELS: dict[str, str] = {"l1_l2": "L1-L2", "l2_l3": "L2-L3", "l3_l4": "L3-L4", "l4_l5": "L4-L5", "l5_s1": "L5-S1"}
#: RSNA submission probability columns, in grade order.
RSNA_SUBMISSION_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")


def probability_columns(scale: GradeScale) -> list[str]:
    """Names of the probability columns of the tidy table for ``scale``: ``p_0`` .. ``p_{k-1}``."""
    return [f"p_{i}" for i in range(scale.n_grades)]


def _require(table: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SiteDataError(f"{source}: missing columns {missing}; required {list(required)}; found {list(table.columns)}")


def _grade_failure(case_id: str, column: str, value: object, scale: GradeScale, site: str) -> CaseFailure:
    return CaseFailure(
        case_id=case_id, stage="grading", error_type="UnknownGrade", site=site,
        error=f"{column}: allowed values are {list(scale.labels)} or codes 0..{scale.n_grades - 1}; found {value!r}",
    )  # fmt: skip


def _encode(table: pd.DataFrame, column: str, scale: GradeScale) -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Code ``column`` on ``scale``; rows with a missing value are kept out (not graded), unknown values fail."""
    codes = table[column].map(lambda v: None if _is_missing(v) else scale.code(v))
    missing = table[column].map(_is_missing)
    unknown = codes.isna() & ~missing
    failures = [  # the source column when the layout is wide (RSNA), else the grade column and the level
        _grade_failure(str(row["case_id"]), str(row["source_column"]) if "source_column" in row else f"{column} ({row['level']} {row['condition']} {row['side']})",
                       row[column], scale, str(row.get("site", "Unknown")))
        for _, row in table[unknown].iterrows()
    ]
    if missing.any():
        logger.info("%s: %d rows without a grade (not graded, not failures)", column, int(missing.sum()))
    out = table[~unknown & ~missing].copy()
    out["grade"] = codes[~unknown & ~missing].astype(np.int64)
    return out, failures


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _check_probabilities(table: pd.DataFrame, columns: list[str], source: str) -> None:
    values = table[columns].to_numpy(dtype=np.float64)
    values = values[~np.isnan(values).all(axis=1)]  # rows without probabilities (a reader's grades) are fine
    table = table[~table[columns].isna().all(axis=1)]
    bad = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (np.abs(values.sum(axis=1) - 1.0) > PROBABILITY_TOLERANCE)
    if bad.any():
        first = table[bad].iloc[0]
        raise SiteDataError(
            f"{source}: probability columns {columns} must be all empty or finite, >= 0 and sum to 1 (tolerance {PROBABILITY_TOLERANCE}); "
            f"{int(bad.sum())} rows do not, first case {first['case_id']!r} with {[float(first[c]) for c in columns]}"
        )


def read_long_table(
    source: Path | pd.DataFrame, *, scale: GradeScale = RSNA_SCALE, reader: str = "reference"
) -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Read a plain long table (one row per case, level, condition, side and reader).

    Required columns: ``case``, ``level``, ``condition``, ``side``, ``grade``. Optional: ``patient``
    (default: the case), ``reader`` (default ``reader``), ``p_0`` .. ``p_{k-1}`` class probabilities, and
    any case-level metadata (``site``, ``vendor``, ``sex``, ...), kept as they are.

    Returns
    -------
    (pandas.DataFrame, list of CaseFailure)
        The tidy grading table and one failure per row whose grade is not on ``scale``.

    Examples
    --------
    >>> df = pd.DataFrame({"case": ["a", "a"], "level": ["L4-L5"] * 2, "condition": ["spinal_canal_stenosis"] * 2,
    ...                    "side": ["none"] * 2, "grade": ["Severe", "huge"], "reader": ["r1", "r2"]})
    >>> table, failures = read_long_table(df)
    >>> table["grade"].tolist(), failures[0].error
    ([2], "grade (L4-L5 spinal_canal_stenosis none): allowed values are ['Normal/Mild', 'Moderate', 'Severe'] or codes 0..2; found 'huge'")
    """
    name = "long grading table" if isinstance(source, pd.DataFrame) else str(source)
    table = source.copy() if isinstance(source, pd.DataFrame) else pd.read_csv(source, dtype={"case": str, "patient": str})
    _require(table, LONG_TABLE_COLUMNS, name)
    table = table.rename(columns={"case": "case_id", "patient": "patient_id"})
    table["case_id"] = table["case_id"].astype(str)
    if "patient_id" not in table.columns:
        table["patient_id"] = table["case_id"]
    if "reader" not in table.columns:
        table["reader"] = reader
    table["reader"] = table["reader"].astype(str)
    for col in ("level", "condition", "side"):
        table[col] = table[col].astype(str)
    probs = probability_columns(scale)
    present = [c for c in probs if c in table.columns]
    if present and present != probs:
        raise SiteDataError(f"{name}: probability columns must be all of {probs} or none; found {present}")
    table, failures = _encode(table, "grade", scale)
    if present:
        _check_probabilities(table, probs, name)
    duplicated = table.duplicated(["case_id", "level", "condition", "side", "reader"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise SiteDataError(f"{name}: {int(duplicated.sum())} rows repeat a (case, level, condition, side, reader); first {first['case_id']!r} {first['level']} {first['condition']} {first['side']} {first['reader']}")
    return table.reset_index(drop=True), failures


_RSNA_COLUMN = re.compile(r"^(?P<condition>[a-z_]+)_(?P<level>l[1-5]_(?:l[2-5]|s1))$")


def read_rsna_train(source: Path | pd.DataFrame, *, reader: str = "reference") -> tuple[pd.DataFrame, list[CaseFailure]]:
    """Read the RSNA 2024 lumbar spine ``train.csv`` layout into the tidy grading table.

    One row per ``study_id``; 25 grade columns ``{condition}_{level}`` such as ``spinal_canal_stenosis_l4_l5``
    or ``left_neural_foraminal_narrowing_l3_l4`` with values ``Normal/Mild``, ``Moderate``, ``Severe``
    (empty = not graded, left out and logged). The study is the case and, lacking a patient id, the patient.

    Examples
    --------
    >>> wide = pd.DataFrame({"study_id": [4003253], "spinal_canal_stenosis_l4_l5": ["Severe"]})
    >>> table, failures = read_rsna_train(wide)
    >>> table[["case_id", "level", "condition", "side", "grade"]].values.tolist()
    [['4003253', 'L4-L5', 'spinal_canal_stenosis', 'none', 2]]
    """
    name = "RSNA train table" if isinstance(source, pd.DataFrame) else str(source)
    wide = source.copy() if isinstance(source, pd.DataFrame) else pd.read_csv(source, dtype={"study_id": str})
    _require(wide, ("study_id",), name)
    grade_columns = []
    for col in wide.columns:
        if col == "study_id":
            continue
        match = _RSNA_COLUMN.match(str(col))
        if not match or match["condition"] not in RSNA_CONDITIONS or match["level"] not in RSNA_LEVELS:
            raise SiteDataError(f"{name}: column {col!r} is not an RSNA grade column; allowed '<condition>_<level>' with condition in {list(RSNA_CONDITIONS)} and level in {list(RSNA_LEVELS)}")
        grade_columns.append(col)
    if not grade_columns:
        raise SiteDataError(f"{name}: no grade columns; expected columns such as 'spinal_canal_stenosis_l4_l5'")
    long = wide.melt(id_vars=["study_id"], value_vars=grade_columns, var_name="source_column", value_name="grade")
    parts = long["source_column"].str.extract(_RSNA_COLUMN)
    long["case_id"] = long["study_id"].astype(str)
    long["patient_id"] = long["case_id"]
    long["condition"] = parts["condition"].map(lambda c: RSNA_CONDITIONS[c][0])
    long["side"] = parts["condition"].map(lambda c: RSNA_CONDITIONS[c][1])
    long["level"] = parts["level"].map(RSNA_LEVELS)
    long["reader"] = reader
    long, failures = _encode(long, "grade", RSNA_SCALE)
    return long[list(GRADING_COLUMNS)].reset_index(drop=True), failures


def read_rsna_submission(source: Path | pd.DataFrame, *, reader: str = "model") -> pd.DataFrame:
    """Read an RSNA 2024 submission (``row_id,normal_mild,moderate,severe``) as model probabilities.

    ``row_id`` is ``{study_id}_{condition column prefix}_{level}``. The model's grade is the most probable
    class (ties to the less severe grade).

    Examples
    --------
    >>> sub = pd.DataFrame({"row_id": ["7_spinal_canal_stenosis_l4_l5"], "normal_mild": [0.2], "moderate": [0.3], "severe": [0.5]})
    >>> read_rsna_submission(sub)[["case_id", "level", "grade", "p_2"]].values.tolist()
    [['7', 'L4-L5', 2, 0.5]]
    """
    name = "RSNA submission" if isinstance(source, pd.DataFrame) else str(source)
    sub = source.copy() if isinstance(source, pd.DataFrame) else pd.read_csv(source, dtype={"row_id": str})
    _require(sub, ("row_id", *RSNA_SUBMISSION_COLUMNS), name)
    parts = sub["row_id"].astype(str).str.extract(r"^(?P<study>[^_]+)_(?P<condition>[a-z_]+)_(?P<level>l[1-5]_(?:l[2-5]|s1))$")
    bad = parts["study"].isna() | ~parts["condition"].isin(list(RSNA_CONDITIONS)) | ~parts["level"].isin(list(RSNA_LEVELS))
    if bad.any():
        raise SiteDataError(f"{name}: row_id must be '<study_id>_<condition>_<level>' with condition in {list(RSNA_CONDITIONS)} and level in {list(RSNA_LEVELS)}; found {sub['row_id'][bad].iloc[0]!r}")
    probs = probability_columns(RSNA_SCALE)
    out = pd.DataFrame({
        "case_id": parts["study"], "patient_id": parts["study"], "level": parts["level"].map(RSNA_LEVELS),
        "condition": parts["condition"].map(lambda c: RSNA_CONDITIONS[c][0]), "side": parts["condition"].map(lambda c: RSNA_CONDITIONS[c][1]),
        "reader": reader,
    })  # fmt: skip
    for col, src in zip(probs, RSNA_SUBMISSION_COLUMNS):
        out[col] = sub[src].astype(np.float64).to_numpy()
    _check_probabilities(out, probs, name)
    out["grade"] = out[probs].to_numpy().argmax(axis=1).astype(np.int64)
    return out[[*GRADING_COLUMNS, *probs]]
