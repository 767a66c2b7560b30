"""Images that do not look like Hounsfield units, for a model that maps fixed HU ranges: a per-case warning.

The real lumbar CT crop (../shared/data/tptbox-lumbar-ct, minimum -1030 HU) passes; the same image with its
RescaleIntercept (-1024) undone (every value shifted by +1024, the classic DICOM-to-NIfTI mistake) is flagged. A
CT run records the warning in image_warnings.csv and results.json and shows it in the report; the case is still
scored (a crop of bone alone has no air, so this cannot be an error).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from audit.cli import app, demo_protocol_path
from audit.harmonize.checks import check_case
from audit.label_maps import get_label_map

CT = "tptbox-lumbar-ct/sub-ct_label-22_ct.nii.gz"
VERT = "tptbox-lumbar-ct/sub-ct_seg-vert_label-22_msk.nii.gz"


def without_intercept(src: Path, dst: Path) -> Path:
    """The CT with stored values instead of HU: +1024 everywhere (RescaleIntercept -1024 not applied)."""
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj).astype(np.int16) + np.int16(1024)
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(dst))
    return dst


def test_check_case_warns_only_for_a_hounsfield_model_and_an_image_without_air(shared_data, tmp_path):
    vert = get_label_map("tptbox_vert")
    real = check_case("ct", shared_data / CT, shared_data / VERT, vert, site="s", expect_hounsfield=True)
    assert real.ok and real.warnings == ()
    shifted = without_intercept(shared_data / CT, tmp_path / "shifted.nii.gz")
    flagged = check_case("ct", shifted, shared_data / VERT, vert, site="s", expect_hounsfield=True)
    assert flagged.ok and len(flagged.warnings) == 1  # a warning, not a failure
    low = int(np.asanyarray(nib.load(str(shifted)).dataobj).min())
    assert low == -1030 + 1024 and flagged.warnings[0] == f"image does not look like Hounsfield units: minimum {low} > -900 HU (no air)"
    assert check_case("ct", shifted, shared_data / VERT, vert, site="s").warnings == ()  # an MRI-style model: no HU check


def test_a_ct_run_records_reports_and_still_scores_the_warned_case(tmp_path):
    protocol = yaml.safe_load(demo_protocol_path("ct").read_text())
    protocol["synthetic_cohort"]["n_cases"] = 8
    protocol["statistics"]["bootstrap_iterations"] = 100
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(protocol))
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(path), "--out", str(out), "--until", "sites", "--quiet"])
    assert first.exit_code == 0, first.output + repr(first.exception)
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    victim = manifest.iloc[0]
    image = out / victim["image_path"]
    without_intercept(image, image)
    rest = runner.invoke(app, ["run", str(path), "--out", str(out), "--from", "checks", "--quiet"])
    assert rest.exit_code == 0, rest.output + repr(rest.exception)
    warnings = pd.read_csv(out / "image_warnings.csv", dtype=str)
    assert list(warnings["case_id"]) == [victim["case_id"]] and "does not look like Hounsfield units" in warnings["warning"].iloc[0]
    rows = json.loads((out / "results.json").read_text())["harmonization"]["warnings"]
    flagged = [r for r in rows if r["warning"].startswith(f"case {victim['case_id']}: ")]
    assert len(flagged) == 1 and flagged[0]["site"] == victim["site"] and flagged[0]["n_cases"] == 1
    assert "does not look like Hounsfield units" in (out / "report.html").read_text()
    metrics = pd.read_csv(out / "metrics.csv", dtype={"case_id": str})
    assert (metrics.loc[metrics["case_id"] == victim["case_id"], "status"] != "failed").all()  # scored, not failed
