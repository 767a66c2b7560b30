"""End to end on the real scans in ../shared/data (PIR, PSR and LPS orientations, three label conventions).

A black-box "model" is audited through the `predictions` model kind: its outputs are the real reference
labels moved by one voxel. The Dice in the run's metric table is checked against plain numpy, and the
report's existence and the failure accounting are checked on a cohort with one deliberately corrupt case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.label_maps import get_label_map
from audit.ontology import COARSE_VALUES, remap_labels

STRUCTURES = ("vertebral_body", "intervertebral_disc", "spinal_cord")


def real_site_cases(shared: Path) -> list[dict]:
    """Three real cases, each with the label file and the label map of its source project."""
    tpt = shared / "tptbox-cervical-mri"
    sct = shared / "sct-cervical" / "t2"
    ts = shared / "totalseg-mr"
    return [
        {"site": "tptbox", "id": "c5c7", "image": tpt / "sub-mri_label-6_T2w.nii.gz", "label": tpt / "sub-mri_seg-subreg_label-6_msk.nii.gz", "map": "tptbox_subregion", "vendor": "SIEMENS", "field": 1.494, "age": "061Y", "sex": "F"},
        {"site": "sct", "id": "t2", "image": sct / "t2.nii.gz", "label": sct / "t2_seg-manual_labeled.nii.gz", "map": "sct_levels", "vendor": "GE MEDICAL SYSTEMS", "field": 3, "age": "034Y", "sex": "M"},
        {"site": "totalseg", "id": "mr", "image": ts / "example_mr_sm.nii.gz", "label": ts / "example_seg_mr.nii.gz", "map": "totalseg_mr", "vendor": "Philips Medical Systems", "field": "3.0T", "age": "", "sex": "Female"},
    ]


def shifted_prediction(label_path: Path, label_map: str) -> nib.Nifti1Image:
    """The reference on the ontology (spine_audit values), rolled by one voxel along the first axis."""
    img = nib.load(str(label_path))
    canonical = remap_labels(np.asanyarray(img.dataobj), get_label_map(label_map)).array
    return nib.Nifti1Image(np.roll(canonical, 1, axis=0).astype(np.uint8), img.affine)


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    sites = []
    for case in real_site_cases(shared_data):
        site_dir = root / case["site"]
        (site_dir / "images").mkdir(parents=True)
        (site_dir / "labels").mkdir()
        shutil.copy(case["image"], site_dir / "images" / f"{case['id']}.nii.gz")
        shutil.copy(case["label"], site_dir / "labels" / f"{case['id']}.nii.gz")
        pd.DataFrame(
            [{"case_id": case["id"], "patient_id": f"{case['site']}-p1", "manufacturer": case["vendor"], "field_strength": case["field"], "age": case["age"], "sex": case["sex"]}]
        ).to_csv(site_dir / "metadata.csv", index=False)
        pred_dir = root / "predictions" / case["site"]
        pred_dir.mkdir(parents=True)
        nib.save(shifted_prediction(case["label"], case["map"]), str(pred_dir / f"{case['id']}.nii.gz"))
        sites.append({"name": case["site"], "format": "nifti_table", "root": str(site_dir), "label_map": case["map"]})
    # a fourth site whose only label file is corrupt: it must be counted as failed, not dropped
    bad = root / "broken"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    shutil.copy(real_site_cases(shared_data)[0]["image"], bad / "images" / "x.nii.gz")
    (bad / "labels" / "x.nii.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00truncated")
    # ... and a metadata row whose image and label files do not exist (an adapter-stage failure)
    pd.DataFrame(
        [
            {"case_id": "x", "patient_id": "b1", "manufacturer": "SIEMENS", "field_strength": 3, "age": "050Y", "sex": "F"},
            {"case_id": "y", "patient_id": "b2", "manufacturer": "SIEMENS", "field_strength": 3, "age": "051Y", "sex": "M"},
        ]
    ).to_csv(bad / "metadata.csv", index=False)
    sites.append({"name": "broken", "format": "nifti_table", "root": str(bad), "label_map": "cspineseg"})
    protocol = {
        "name": "real data audit",
        "version": "1",
        "sites": sites,
        "model": {"name": "shifted-reference", "kind": "predictions", "path": str(root / "predictions"), "options": {"pattern": "{site}/{local_id}.nii.gz"}, "labels": {1: "vertebral_body", 2: "intervertebral_disc", 3: "spinal_canal", 4: "spinal_cord", 5: "vertebra"}},
        "structures": list(STRUCTURES),
        "metrics": {"names": ["dice", "hd95"]},
        "subgroups": {"columns": ["site", "vendor", "sex"]},
        "statistics": {"bootstrap_iterations": 200, "min_group_size": 2, "adjusted_model": {"enabled": False}},
        "acceptance": [{"id": "dice", "metric": "dice", "threshold": 0.5}],
    }
    protocol_path = root / "protocol.yaml"
    protocol_path.write_text(yaml.safe_dump(protocol))
    out = root / "run"
    result = CliRunner().invoke(app, ["run", str(protocol_path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, shared_data


def test_dice_on_real_scans_matches_numpy(real_run):
    run, shared = real_run
    metrics = pd.read_csv(run / "metrics.csv").set_index(["case_id", "structure", "metric"])
    for case in real_site_cases(shared):
        ref = remap_labels(np.asanyarray(nib.load(str(case["label"])).dataobj), get_label_map(case["map"])).array
        pred = np.roll(ref, 1, axis=0)
        for structure in STRUCTURES:
            a, b = ref == COARSE_VALUES[structure], pred == COARSE_VALUES[structure]
            row = metrics.loc[(f"{case['site']}/{case['id']}", structure, "dice")]
            if structure not in get_label_map(case["map"]).structures:  # the site does not annotate it (issue 11)
                assert row["status"] == "not_assessed" and np.isnan(row["value"])
                continue
            if not a.any():
                assert row["status"] == "both_empty"
                continue
            expected = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
            np.testing.assert_allclose(row["value"], expected, rtol=1e-12, err_msg=f"{case['site']} {structure}")


def test_predictions_keep_native_grid_for_pir_psr_lps(real_run):
    run, shared = real_run
    manifest = pd.read_csv(run / "manifest.csv").set_index("case_id")
    for case in real_site_cases(shared):
        ref = nib.load(str(case["label"]))
        pred_path = Path(manifest.loc[f"{case['site']}/{case['id']}", "prediction_path"])
        pred = nib.load(str(pred_path if pred_path.is_absolute() else run / pred_path))
        assert pred.shape[:3] == ref.shape[:3]
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)


def test_corrupt_case_is_counted_and_listed_not_dropped(real_run):
    run, _ = real_run
    results = json.loads((run / "results.json").read_text())
    failures = pd.DataFrame(results["failures"])
    assert {"broken/x", "broken/y"} <= set(failures["case_id"])
    assert results["data"]["n_failed_cases"] == 2 and results["data"]["n_cases"] == 5
    metrics = pd.read_csv(run / "metrics.csv")
    for case in ("broken/x", "broken/y"):
        rows = metrics.loc[metrics["case_id"] == case].set_index("structure")["status"]
        # the cspineseg site annotates bodies and discs: those failed; its cases are never scored on the cord
        assert (rows.drop("spinal_cord") == "failed").all() and (rows.loc["spinal_cord"] == "not_assessed").all()
        assert case in (run / "report.html").read_text()
    broken = pd.DataFrame(results["statistics"]["group_estimates"]).query("axis == 'site' and group == 'broken'").set_index("structure")
    assert (broken.drop("spinal_cord")["n_failed"] == 2).all()  # counted in the statistics, not dropped
    assert (broken.loc["spinal_cord", "n_failed"] == 0).all()


def test_real_metadata_strings_are_harmonized(real_run):
    run, _ = real_run
    manifest = pd.read_csv(run / "manifest.csv").set_index("case_id")
    assert manifest.loc["tptbox/c5c7", ["vendor", "field_strength", "age_years", "sex"]].tolist() == ["Siemens", "1.5T", 61.0, "F"]
    assert manifest.loc["sct/t2", ["vendor", "field_strength", "sex"]].tolist() == ["GE", "3T", "M"]
    assert manifest.loc["totalseg/mr", ["vendor", "field_strength", "sex"]].tolist() == ["Philips", "3T", "F"]
    assert np.isnan(manifest.loc["totalseg/mr", "age_years"])
