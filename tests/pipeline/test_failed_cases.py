"""Failed cases on real scans: they keep their metadata, and a run where every case fails still reports.

The site is a nifti_table folder built from the real TPTBox cervical MRI crop in ../shared/data; the "model"
is the `predictions` kind whose output is the real reference label remapped to the ontology (a perfect
prediction). The CLI is called the way users call it: from the folder holding the protocol, with relative
paths for the protocol, the site root, the predictions and ``--out``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.label_maps import get_label_map
from audit.ontology import remap_labels

TPT = "tptbox-cervical-mri"
IMAGE, LABEL = "sub-mri_label-6_T2w.nii.gz", "sub-mri_seg-subreg_label-6_msk.nii.gz"


def site_with_missing_labels(shared: Path, root: Path, *, cases: dict[str, dict], labelled: set[str]) -> None:
    """``root/site`` (images, labels for ``labelled`` only, metadata.csv) and ``root/predictions``."""
    (root / "site" / "images").mkdir(parents=True)
    (root / "site" / "labels").mkdir()
    (root / "predictions").mkdir()
    label_img = nib.load(str(shared / TPT / LABEL))
    canonical = remap_labels(np.asanyarray(label_img.dataobj), get_label_map("tptbox_subregion")).array.astype(np.uint8)
    for case_id in cases:
        shutil.copy(shared / TPT / IMAGE, root / "site" / "images" / f"{case_id}.nii.gz")
        nib.save(nib.Nifti1Image(canonical, label_img.affine), str(root / "predictions" / f"{case_id}.nii.gz"))
        if case_id in labelled:
            shutil.copy(shared / TPT / LABEL, root / "site" / "labels" / f"{case_id}.nii.gz")
    pd.DataFrame([{"case_id": k, **v} for k, v in cases.items()]).to_csv(root / "site" / "metadata.csv", index=False)


def write_protocol(root: Path) -> Path:
    protocol = {
        "name": "missing labels",
        "version": "1",
        "sites": [{"name": "tpt", "format": "nifti_table", "root": "site", "label_map": "tptbox_subregion"}],
        "model": {"name": "perfect", "kind": "predictions", "path": "predictions", "options": {"pattern": "{local_id}.nii.gz"},
                  "labels": {1: "vertebral_body", 2: "intervertebral_disc", 3: "spinal_canal", 4: "spinal_cord"}},
        "structures": ["vertebral_body", "spinal_cord"],
        "metrics": {"names": ["dice"]},
        "subgroups": {"columns": ["site", "vendor", "sex"]},
        "statistics": {"bootstrap_iterations": 100, "min_group_size": 2, "adjusted_model": {"enabled": False}},
        "acceptance": [{"id": "dice", "metric": "dice", "threshold": 0.5}],
        "report": {"worst_cases_per_group": 1},
    }  # fmt: skip
    (root / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    return Path("protocol.yaml")


CASES = {
    "a": {"manufacturer": "SIEMENS", "field_strength": 1.494, "age": "061Y", "sex": "F", "patient_id": "p1"},
    "b": {"manufacturer": "SIEMENS", "field_strength": 1.494, "age": "045Y", "sex": "M", "patient_id": "p2"},
    "c": {"manufacturer": "SIEMENS", "field_strength": 1.494, "age": "052Y", "sex": "F", "patient_id": "p3"},
}


def run_cli(root: Path, monkeypatch) -> CliRunner:
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", str(write_protocol(root)), "--out", "out/run", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root / "out" / "run"


def test_a_case_with_a_missing_label_keeps_its_metadata_and_creates_no_unknown_group(shared_data, tmp_path, monkeypatch):
    site_with_missing_labels(shared_data, tmp_path, cases=CASES, labelled={"a", "c"})
    run = run_cli(tmp_path, monkeypatch)
    manifest = pd.read_csv(run / "manifest.csv").set_index("case_id")
    assert manifest.loc["tpt/b", ["site", "vendor", "field_strength", "age_years", "sex"]].tolist() == ["tpt", "Siemens", "1.5T", 45.0, "M"]
    results = json.loads((run / "results.json").read_text())
    failures = pd.DataFrame(results["failures"])
    assert failures[["case_id", "error_type"]].values.tolist() == [["tpt/b", "MissingLabel"]]
    table1 = pd.DataFrame(results["cohort"]["table1"])
    assert "Unknown" not in set(table1.loc[table1["axis"].isin(["vendor", "field_strength", "sex"]), "group"])
    assert table1.query("axis == 'sex' and group == 'M'")["n_cases"].tolist() == [1]  # the failed case counted in Table 1
    completeness = pd.DataFrame(results["harmonization"]["metadata_completeness"]).set_index("column")
    assert completeness.loc["sex", "unknown"] == 0 and completeness.loc["sex", "known"] == 3
    estimates = pd.DataFrame(results["statistics"]["group_estimates"])
    male = estimates.query("axis == 'sex' and group == 'M' and metric == 'dice'")
    assert (male["n_failed"] == 1).all()  # the failed case is counted in its own group, not a phantom one
    assert set(estimates.loc[estimates["axis"] == "sex", "group"]) == {"F", "M"}


def test_when_every_case_fails_the_run_still_writes_a_report_saying_so(shared_data, tmp_path, monkeypatch):
    site_with_missing_labels(shared_data, tmp_path, cases=CASES, labelled=set())
    run = run_cli(tmp_path, monkeypatch)
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["n_cases"] == results["data"]["n_failed_cases"] == 3
    assert "pass" not in {r["status"] for r in results["statistics"]["acceptance"]}  # never improved by failures
    assert results["warnings"][0].startswith("every case failed")
    html = (run / "report.html").read_text(encoding="utf-8")
    for case_id in ("tpt/a", "tpt/b", "tpt/c"):
        assert case_id in html
    assert "3 case(s) failed" in html and "every case failed" in html
