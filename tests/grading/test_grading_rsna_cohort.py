"""RSNA inputs with series descriptions and a metadata table (synthetic RSNA-shaped fixtures: no RSNA data here)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from grading_builders import RAW_VENDORS, rsna_metadata_table, rsna_series_table, rsna_study_tables
from typer.testing import CliRunner

from audit.cli import app
from audit.errors import ProtocolError, SiteDataError
from audit.grading.cohort import attach_metadata, missing_series, read_rsna_series
from audit.grading.protocol import load_grading_protocol
from audit.grading.runner import RESULTS_NAME, REPORT_NAME
from audit.grading.tables import read_rsna_train
from audit.tables_input.spec import MetadataSpec

PROTOCOL = """task: grading
input:
  format: rsna
  table: train.csv
  predictions: submission.csv
  series: train_series_descriptions.csv
  metadata: {path: meta.csv}
breakdowns: [site, vendor, field_strength, sex, age_band]
fairness_groups: [vendor]
bootstrap: {n_resamples: 200, seed: 0}
min_group_size: 3
"""


def write_rsna_folder(folder, n_studies=12):
    """train.csv, submission.csv, series (study 1003 lacks Sagittal T1, 1005 is absent, one Coronal series) and metadata
    (study 1004 with an unparseable age, 1007 without a row)."""
    train, sub = rsna_study_tables(4, n_studies=n_studies)
    ids = train["study_id"].tolist()
    train.to_csv(folder / "train.csv", index=False)
    sub.to_csv(folder / "submission.csv", index=False)
    rsna_series_table([s for s in ids if s != 1005], lacking={1003: "Sagittal T1"}, extra_description=True).to_csv(folder / "train_series_descriptions.csv", index=False)
    rsna_metadata_table(ids, bad_age_study=1004, without=(1007,)).to_csv(folder / "meta.csv", index=False)
    (folder / "g.yaml").write_text(PROTOCOL)
    return ids


def test_series_are_read_and_missing_series_are_flagged():
    series, failures = read_rsna_series(rsna_series_table([1, 2], lacking={2: "Axial T2"}, extra_description=True))
    assert series.set_index("case_id").loc["2"].to_dict() == {"Sagittal T1": True, "Sagittal T2/STIR": True, "Axial T2": False}
    assert [f.error_type for f in failures] == ["UnknownSeriesDescription"] and "found 'Coronal T2'" in failures[0].error
    train, _ = rsna_study_tables(0, n_studies=3)
    train["study_id"] = [1, 2, 3]
    table, _ = read_rsna_train(train)
    flags = missing_series(table, series)
    # study 2 lacks Axial T2 (subarticular: left and right x 5 levels); study 3 has no series at all (every condition)
    by = flags.set_index(["case_id", "condition"])["n_levels"].to_dict()
    assert by == {("2", "subarticular_stenosis"): 10, ("3", "neural_foraminal_narrowing"): 10, ("3", "spinal_canal_stenosis"): 5, ("3", "subarticular_stenosis"): 10}
    with pytest.raises(SiteDataError, match=r"missing columns \['series_description'\]"):
        read_rsna_series(pd.DataFrame({"study_id": [1], "series_id": [2]}))


def test_metadata_is_harmonized_with_the_segmentation_vocabulary(tmp_path):
    train, _ = rsna_study_tables(1, n_studies=6)
    ids = train["study_id"].tolist()
    rsna_metadata_table(ids, bad_age_study=ids[1], without=(ids[2],)).to_csv(tmp_path / "meta.csv", index=False)
    table, _ = read_rsna_train(train)
    out, failures = attach_metadata(table, MetadataSpec(path=tmp_path / "meta.csv"))
    cases = out.drop_duplicates("case_id").set_index("case_id")
    first = cases.loc[str(ids[0])]
    assert (first.site, first.vendor, first.field_strength, first.age_years, first.age_band, first.sex, first.race) == ("site-A", "Siemens", "1.5T", 35.0, "18-39", "F", "Unknown")
    assert cases.loc[str(ids[4]), ["vendor", "field_strength", "age_band"]].tolist() == [RAW_VENDORS[1][1], "3T", "60-74"]  # 30000 gauss, '063Y'
    assert cases.loc[str(ids[5]), ["vendor", "field_strength", "sex"]].tolist() == [RAW_VENDORS[2][1], "3T", "M"]
    # no metadata row: kept with Unknown metadata; failed metadata (age 'abc'): a recorded failure, levels not scored
    assert cases.loc[str(ids[2]), ["site", "vendor", "sex", "age_band"]].tolist() == ["Unknown"] * 4
    assert str(ids[1]) not in cases.index and [f.error_type for f in failures] == ["MetadataError"] and "abc" in failures[0].error
    assert len(out) == 25 * 5


def test_rsna_protocol_with_series_and_metadata(tmp_path):
    ids = write_rsna_folder(tmp_path)
    res = CliRunner().invoke(app, ["run", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "run" / RESULTS_NAME).read_text())
    # 12 studies, one (1004) failed on metadata: 11 scored x 25 levels
    assert doc["counts"]["n_cases"] == 11 and doc["failures"]["by_type"] == {"MetadataError": 1, "UnknownSeriesDescription": 1}
    assert doc["series"]["studies_with"] == {"Sagittal T1": 10, "Sagittal T2/STIR": 11, "Axial T2": 11}
    # 1003 lacks Sagittal T1 (foramina, 10 levels); 1005 lacks all (25 levels); both still scored
    assert doc["series"]["missing"]["count"] == 4 and doc["series"]["missing"]["n_levels"] == 35
    assert doc["series"]["missing"]["by_condition"] == {"neural_foraminal_narrowing": 2, "spinal_canal_stenosis": 1, "subarticular_stenosis": 1}
    metrics = pd.DataFrame(doc["metrics"])
    assert set(metrics.loc[metrics["breakdown"] == "vendor", "group"]) == {"GE", "Philips", "Siemens", "Unknown"}  # 1007 has no metadata row
    table1 = pd.DataFrame(doc["table1"])
    assert table1.groupby("axis")["n_cases"].sum().eq(11).all() and set(table1["axis"]) >= {"site", "vendor", "field_strength", "sex", "age_band"}
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (tmp_path / "run" / REPORT_NAME).read_text())
    text = json.dumps(doc)
    for s in ids:  # no study id in the outputs
        assert not re.search(rf"\b{s}\b", html) and not re.search(rf"\b{s}\b", text), s


@pytest.mark.parametrize(
    ("inp", "message"),
    [
        ("{format: long, table: g.csv, series: s.csv}", r"input.series: .* for the RSNA format only"),
        ("{format: long, table: g.csv, metadata: {path: m.csv, sheet: 1}}", r"input.metadata: unknown keys \['sheet'\]"),
        ("{format: long, table: g.csv, metadata: [m.csv]}", r"input.metadata: expected a table path or a mapping"),
    ],
    ids=["series-long", "metadata-key", "metadata-type"],
)
def test_input_errors_name_the_key(tmp_path, inp, message):
    (tmp_path / "g.yaml").write_text(f"task: grading\ninput: {inp}\n")
    with pytest.raises(ProtocolError, match=message):
        load_grading_protocol(tmp_path / "g.yaml")
