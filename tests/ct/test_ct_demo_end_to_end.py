"""`spine-audit demo --modality ct` end to end: per-vertebra outputs checked against an independent recount."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from report_html_helpers import ReportParser, span_text_expected  # noqa: E402


@pytest.fixture(scope="module")
def ct_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctdemo") / "run"
    result = CliRunner().invoke(app, ["demo", "--modality", "ct", "--out", str(out), "--cases", "8", "--seed", "5", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_ct_demo_writes_the_per_vertebra_outputs(ct_demo):
    table = pd.read_csv(ct_demo / "vertebrae.csv")
    summary = json.loads((ct_demo / "vertebrae.json").read_text())
    assert json.loads((ct_demo / "results.json").read_text())["vertebrae"] == summary
    manifest = pd.read_csv(ct_demo / "manifest.csv")
    assert len(manifest) == 8 and {"kvp_band", "slice_thickness_band", "kernel_class", "contrast"} <= set(manifest.columns)
    ref = table[table["in_reference"]]
    overall = summary["overall"][0]
    # independent recount from the per-vertebra table
    assert overall["n_reference"] == len(ref)
    assert overall["identified"] == int(ref["identified"].sum())
    assert overall["identification_percent"] == pytest.approx(100 * ref["identified"].mean(), abs=1e-9)
    assert overall["off_by_one"] == int((ref["error"] == "off_by_one").sum())
    assert overall["false_positive"] == int((~table["in_reference"]).sum())
    for row in summary["per_level"]:
        sub = ref[ref["vertebra"] == row["structure"]]
        assert row["n_reference"] == len(sub) and row["identified"] == int(sub["identified"].sum())
    truth = json.loads((ct_demo / "cohort" / "cohort.json").read_text())
    n_vertebrae = sum(len(c["levels"]) for c in truth["cases"])
    assert len(ref) == n_vertebrae  # every generated vertebra is a reference row


def test_ct_demo_report_numbers_equal_results_json(ct_demo):
    """Every number of the report (the per-vertebra section included) found in results.json by key and re-formatted."""
    results = json.loads((ct_demo / "results.json").read_text())
    parser = ReportParser()
    parser.feed((ct_demo / "report.html").read_text())
    assert '<h2 id="vertebrae">Per-vertebra evaluation</h2>' in (ct_demo / "report.html").read_text()
    shown = [(a, t) for a, t in parser.spans if a["data-src"].startswith("vertebrae.")]
    assert len(shown) >= 12 * len(results["vertebrae"]["per_level"])
    for attrs, text in parser.spans:
        assert text == span_text_expected(results, attrs), attrs


def test_ct_demo_evidence_package_holds_the_per_vertebra_outputs(ct_demo, tmp_path):
    """`package` adds vertebrae.csv and vertebrae.json (hashed in SHA256SUMS) and `verify` accepts the package."""
    import zipfile

    zip_path = tmp_path / "evidence.zip"
    result = CliRunner().invoke(app, ["package", str(ct_demo), "--out", str(zip_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        sums = z.read("SHA256SUMS").decode()
        rows = pd.read_csv(z.open("vertebrae.csv"))
    assert {"vertebrae.csv", "vertebrae.json"} <= names and "  vertebrae.csv\n" in sums and "  vertebrae.json\n" in sums
    assert len(rows) == len(pd.read_csv(ct_demo / "vertebrae.csv"))
    assert CliRunner().invoke(app, ["verify", str(zip_path)]).exit_code == 0


def test_label_maps_and_vertebra_settings_reach_worker_processes(tmp_path):
    """map_cases with 2 processes sends LabelMaps (read-only mappings) to the workers: was a pickling error."""
    import numpy as np

    from audit.evaluate import EvaluationSettings
    from audit.execution import map_cases
    from audit.label_maps import get_label_map
    from audit.protocol import VertebraSettings
    from audit.vertebra_eval import evaluate_case_and_vertebrae
    import nibabel as nib

    label = np.zeros((30, 30, 40), np.uint8)
    label[10:20, 10:20, 5:15], label[10:20, 10:20, 25:35] = 20, 21
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "l.nii.gz")
    kw = dict(label_path=str(tmp_path / "l.nii.gz"), prediction_path=str(tmp_path / "l.nii.gz"), reference_map=get_label_map("verse"),
              prediction_map=get_label_map("verse"), settings=EvaluationSettings(("vertebra",), ("dice",)), vertebrae=VertebraSettings())
    results = list(map_cases(evaluate_case_and_vertebrae, [(("a",), kw), (("b",), kw)], workers=2))
    assert [float(m["value"].iloc[0]) for m, _ in results] == [1.0, 1.0]
    assert all(bool(v["identified"].all()) for _, v in results)
