"""BIDS (real spine-generic metadata), nnU-Net raw and CSpineSeg adapters on generated images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from audit.sites import build_manifest, check_site, load_site_config

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SPINE_GENERIC = DATA / "spine-generic-multi-subject"
REPO = Path(__file__).resolve().parents[2]


def write_pair(image: Path, label: Path, values=(1, 2)) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.8, 0.8, 0.8, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.int16), affine), image)
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[0, 0, : len(values)] = values
    nib.save(nib.Nifti1Image(lab, affine), label)


@pytest.mark.skipif(not SPINE_GENERIC.is_dir(), reason=f"real data not found: {SPINE_GENERIC} (see ../shared/data/SOURCES.md)")
def test_bids_on_real_spine_generic_metadata(tmp_path):
    subjects = ["sub-amu01", "sub-balgrist01", "sub-brnoUhb01", "sub-mgh01", "sub-beijingGE01"]
    subjects = [s for s in subjects if (SPINE_GENERIC / s).is_dir()]
    root = tmp_path / "bids"
    root.mkdir()
    shutil.copy(SPINE_GENERIC / "participants.tsv", root / "participants.tsv")
    for sub in subjects:
        (root / sub / "anat").mkdir(parents=True)
        shutil.copy(SPINE_GENERIC / sub / "anat" / f"{sub}_T2w.json", root / sub / "anat")
        write_pair(root / sub / "anat" / f"{sub}_T2w.nii.gz", root / "derivatives/labels" / sub / "anat" / f"{sub}_T2w_seg-manual.nii.gz", values=(1,))
    shutil.copy(SPINE_GENERIC / "sub-amu02" / "anat" / "sub-amu02_T2w.json", root / "orphan.json")
    (root / "sub-amu02" / "anat").mkdir(parents=True)
    shutil.copy(SPINE_GENERIC / "sub-amu02" / "anat" / "sub-amu02_T2w.json", root / "sub-amu02" / "anat")  # sidecar, no image
    config = load_site_config({"name": "sg", "format": "bids", "root": str(root), "label_map": {1: "spinal_cord"}})
    manifest, failures = build_manifest([config])
    assert [(f.case_id, f.error_type) for f in failures] == [("sg/sub-amu02", "MissingImage")]
    # the case without an image keeps its row and metadata (it counts in Table 1); its failure is recorded
    assert sorted(manifest["case_id"]) == sorted(f"sg/{s}" for s in [*subjects, "sub-amu02"])
    orphan = json.loads((SPINE_GENERIC / "sub-amu02" / "anat" / "sub-amu02_T2w.json").read_text())
    assert manifest.set_index("case_id").loc["sg/sub-amu02", "vendor_raw"] == orphan["Manufacturer"]
    # Oracle: the real participants.tsv and sidecars, read independently with pandas/json.
    participants = pd.read_csv(SPINE_GENERIC / "participants.tsv", sep="\t", dtype=str).set_index("participant_id")
    for sub in subjects:
        sidecar = json.loads((SPINE_GENERIC / sub / "anat" / f"{sub}_T2w.json").read_text())
        row = manifest.set_index("case_id").loc[f"sg/{sub}"]
        assert row["vendor_raw"] == sidecar["Manufacturer"] and row["vendor"] in ("Siemens", "Philips", "GE")
        assert row["scanner_model"] == sidecar["ManufacturersModelName"]
        assert row["field_strength"] == "3T" and row["field_strength_t"] == float(sidecar["MagneticFieldStrength"])
        assert row["age_years"] == float(participants.loc[sub, "age"])
        assert row["sex"] == participants.loc[sub, "sex"].upper() and row["patient_id"] == sub
        assert row["race"] == "Unknown" and row["label_map"] == "sg:custom"
    report = check_site(config)
    assert report.label_values[1][2] == "spinal_cord" and report.counts["field_strength"] == {"3T": len(subjects)}


def test_bids_sessions_and_missing_participant(tmp_path):
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t30\n")
    for sub, ses in (("sub-01", "ses-01"), ("sub-01", "ses-02"), ("sub-02", "ses-01")):
        stem = f"{sub}_{ses}_T2w"
        write_pair(root / sub / ses / "anat" / f"{stem}.nii.gz", root / "derivatives/labels" / sub / ses / "anat" / f"{stem}_seg-manual.nii.gz")
    config = load_site_config({"name": "b", "format": "bids", "root": str(root), "label_map": "cspineseg"})
    manifest, failures = build_manifest([config])
    assert manifest["case_id"].tolist() == ["b/sub-01_ses-01", "b/sub-01_ses-02"]
    assert manifest["session"].tolist() == ["ses-01", "ses-02"] and set(manifest["patient_id"]) == {"sub-01"}
    assert [(f.case_id, f.error_type) for f in failures] == [("b/sub-02_ses-01", "MissingMetadata")]


def test_nnunet_raw_with_dataset_json_labels(tmp_path):
    root = tmp_path / "Dataset101_Spine"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0, "vertebral_body": 1, "intervertebral_disc": 2}, "file_ending": ".nii.gz"}))
    write_pair(root / "imagesTr/spine_001_0000.nii.gz", root / "labelsTr/spine_001.nii.gz")
    write_pair(root / "imagesTr/spine_002_0000.nii.gz", root / "labelsTr/spine_002.nii.gz", values=(1, 2, 3))
    write_pair(root / "imagesTs/spine_101_0000.nii.gz", root / "labelsTs/spine_101.nii.gz")
    (root / "labelsTs/spine_101.nii.gz").rename(root / "labelsTs/spine_102.nii.gz")  # label without image, image without label
    (root / "meta.tsv").write_text("case_id\tmanufacturer\tage\nspine_001\tSIEMENS\t045Y\nspine_002\tGE\t50\nspine_101\tGE\t50\nspine_102\tGE\t50\n")
    config = load_site_config({"name": "nn", "format": "nnunet", "root": str(root), "options": {"metadata": "meta.tsv"}})
    assert dict(config.label_map.values) == {1: "vertebral_body", 2: "intervertebral_disc"}
    manifest, failures = build_manifest([config])
    usable = manifest[~manifest["case_id"].isin({f.case_id for f in failures})]
    assert usable["case_id"].tolist() == ["nn/spine_001", "nn/spine_002"] and usable["split"].tolist() == ["Tr", "Tr"]
    assert usable["vendor"].tolist() == ["Siemens", "GE"]
    assert manifest.set_index("case_id").loc[["nn/spine_101", "nn/spine_102"], "vendor"].tolist() == ["GE", "GE"]  # failed, metadata kept
    assert sorted((f.case_id, f.error_type) for f in failures) == [("nn/spine_101", "MissingLabel"), ("nn/spine_102", "MissingImage")]
    report = check_site(config)
    assert [(f.case_id, f.error_type) for f in report.failures if f.stage == "harmonize"] == [("nn/spine_002", "UnknownLabelValuesError")]


def cspineseg_tables(root: Path) -> None:
    """Two patients, three series, in the published CSpineSeg schema (SOURCES.md)."""
    root.mkdir(parents=True)
    pd.DataFrame({
        "submitter_id": ["P1", "P2"], "case_ids": ["P1", "P2"], "age_at_index": ["54.0", ""], "age_at_index_gt89": ["No", "Yes"],
        "sex": ["Female", "Male"], "race": ["Native Hawaiian or other Pacific Islander", "Not Reported"],
        "ethnicity": ["Not Hispanic or Latino", "Not Reported"], "site_id": ["1", "1"],
    }).to_csv(root / "case_R1.tsv", sep="\t", index=False)
    pd.DataFrame({
        "case_ids": ["P1", "P2", "P3"], "imaging_studies.submitter_id": ["S1", "S2", "S3"], "series_uid": ["1.2.3", "1.2.4", "1.2.5"],
        "manufacturer": ["SIEMENS", "GE MEDICAL SYSTEMS", "GE MEDICAL SYSTEMS"], "manufacturer_model_name": ["Skyra", "SIGNA", "SIGNA"],
        "magnetic_field_strength": ["3.0", "1.5", "1.5"], "modality": ["MR"] * 3,
    }).to_csv(root / "mr_series_R1.tsv", sep="\t", index=False)
    for stem in ("P1-S1-1.2.3", "P2-S2-1.2.4", "P3-S3-1.2.5"):
        write_pair(root / "nifti" / f"{stem}.nii.gz", root / "segmentation" / f"{stem}_SEG.nii.gz")


def test_cspineseg_join(tmp_path):
    cspineseg_tables(tmp_path / "cs")
    config = load_site_config({"name": "duke", "format": "cspineseg", "root": str(tmp_path / "cs")})
    assert config.label_map.name == "cspineseg"
    manifest, failures = build_manifest([config])
    m = manifest.set_index("case_id")
    assert list(m.index) == ["duke/P1-S1-1.2.3", "duke/P2-S2-1.2.4"]
    assert m.loc["duke/P1-S1-1.2.3", ["vendor", "field_strength", "age_years", "sex", "race", "ethnicity"]].tolist() == [
        "Siemens", "3T", 54.0, "F", "Native Hawaiian or Other Pacific Islander", "Not Hispanic or Latino"]
    assert m.loc["duke/P2-S2-1.2.4", "age_years"] == 90.0 and bool(m.loc["duke/P2-S2-1.2.4", "age_redacted"])
    assert m.loc["duke/P2-S2-1.2.4", "race"] == "Unknown" and m.loc["duke/P2-S2-1.2.4", "patient_id"] == "P2"
    assert [(f.case_id, f.error_type) for f in failures] == [("duke/P3-S3-1.2.5", "MissingMetadata")]


def test_example_site_configs_load(tmp_path, monkeypatch):
    configs = sorted((REPO / "sites").glob("*.yaml"))
    assert len(configs) >= 3
    monkeypatch.setenv("SPINE_AUDIT_DATA", str(tmp_path))
    for path in configs:
        (tmp_path / "nnunet").mkdir(exist_ok=True)
        config = load_site_config(path)
        assert config.name and config.label_map.values
