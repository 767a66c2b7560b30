"""CTSpine1K and VerSe site presets: layouts, failures, centroid files, CT metadata columns."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from audit.metrics.vertebrae import vertebra_centroids
from audit.sites import build_manifest, load_site_config
from audit.sites.verse import load_verse_centroids


def _nifti(path, array, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


def test_ctspine1k_source_layout_and_failures(tmp_path):
    src = tmp_path / "COVID-19"
    for cid in ("covid_001", "covid_002", "covid_003"):
        _nifti(src / f"{cid}.nii.gz", np.full((4, 4, 4), -1000, np.int16))
    _nifti(src / "covid_001_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _nifti(src / "covid_002_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _nifti(src / "covid_009_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))  # mask without image
    (src / "covid_002.json").write_text(json.dumps({"Manufacturer": "TOSHIBA", "KVP": 120, "SliceThickness": 5, "ConvolutionKernel": "FC52"}))
    config = load_site_config({"name": "covid", "format": "ctspine1k", "root": str(tmp_path),
                               "options": {"source": "COVID-19", "ct_defaults": {"contrast": "non-contrast"}}})
    assert config.label_map.name == "ctspine1k"
    manifest, failures = build_manifest([config])
    # the case without a mask fails but keeps its row (and metadata); the mask without an image has no case to keep
    assert sorted(manifest["case_id"]) == ["covid/covid_001", "covid/covid_002", "covid/covid_003"]
    assert sorted((f.case_id, f.error_type) for f in failures) == [("covid/covid_003", "MissingLabel"), ("covid/covid_009", "MissingImage")]
    row = manifest.set_index("case_id").loc["covid/covid_002"]
    assert (row["vendor"], row["kvp_band"], row["slice_thickness_band"], row["kernel_class"], row["contrast"]) == (
        "Canon", "120kVp", "2.5-5mm", "Other", "non-contrast")
    assert "kernel: unmapped value 'FC52'" in row["ct_metadata_warnings"]
    assert manifest.set_index("case_id").loc["covid/covid_001", "kvp_band"] == "Unknown"


def test_ctspine1k_rejects_an_unknown_source_and_groups_repeated_scans(tmp_path):
    from audit.sites.base import SiteDataError

    with pytest.raises(SiteDataError, match=r"options.source: allowed values \['COLONOG', 'HNSCC-3DCT-RT', 'MSD-liver', 'COVID-19'\]; found 'LIDC'"):
        build_manifest([load_site_config({"name": "x", "format": "ctspine1k", "root": str(tmp_path), "options": {"source": "LIDC"}})])
    src = tmp_path / "HNSCC-3DCT-RT"
    for cid in ("HN_P001_pre", "HN_P001_mid", "HN_P002_pre"):
        _nifti(src / f"{cid}.nii.gz", np.zeros((2, 2, 2), np.int16))
        _nifti(src / f"{cid}_seg.nii.gz", np.zeros((2, 2, 2), np.uint8))
    config = load_site_config({"name": "hn", "format": "ctspine1k", "root": str(tmp_path),
                               "options": {"source": "HNSCC-3DCT-RT", "patient_pattern": r"^(?P<patient>HN_P\d+)_"}})
    manifest, failures = build_manifest([config])
    assert failures == [] and sorted(manifest["patient_id"]) == ["HN_P001", "HN_P001", "HN_P002"]


def test_example_site_configs_load(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SPINE_AUDIT_DATA", str(tmp_path))
    names = sorted(p.name for p in (repo_root / "sites").glob("*.yaml") if p.name.startswith(("ctspine1k", "verse")))
    assert names == ["ctspine1k-colonog.yaml", "ctspine1k-covid-19.yaml", "ctspine1k-hnscc-3dct-rt.yaml", "ctspine1k-msd-liver.yaml", "verse.yaml"]
    for name in names:
        assert load_site_config(repo_root / "sites" / name).format in ("ctspine1k", "verse")


@pytest.fixture()
def verse_layout(tmp_path, shared_data):
    """The real TPTBox CT crop arranged as a VerSe release (symlinks; nothing copied into the repository)."""
    real = shared_data / "tptbox-lumbar-ct"
    raw, der = tmp_path / "verse" / "rawdata" / "sub-ct01", tmp_path / "verse" / "derivatives" / "sub-ct01"
    raw.mkdir(parents=True)
    der.mkdir(parents=True)
    os.symlink(real / "sub-ct_label-22_ct.nii.gz", raw / "sub-ct01_ct.nii.gz")
    os.symlink(real / "sub-ct_seg-vert_label-22_msk.nii.gz", der / "sub-ct01_seg-vert_msk.nii.gz")
    os.symlink(real / "sub-ct_label-22_ct.nii.gz", raw / "sub-ct01_dir-ax_ct.nii.gz")  # a second scan, no mask
    return tmp_path / "verse", der


@pytest.mark.realdata
def test_verse_layout_and_centroid_file_round_trip(verse_layout):
    root, der = verse_layout
    mask = nib.load(der / "sub-ct01_seg-vert_msk.nii.gz")
    arr, spacing = np.asarray(mask.dataobj), tuple(float(z) for z in mask.header.get_zooms())
    assert "".join(nib.aff2axcodes(mask.affine)) == "PIR"
    truth = vertebra_centroids(arr, spacing)
    # written as VerSe does (voxel coordinates along the 'direction' axes); ASL flips all three PIR axes: size - c
    entries = [{"direction": ["A", "S", "L"]}] + [
        {"label": int(k), **dict(zip("XYZ", [float(n - c / s) for c, s, n in zip(v, spacing, arr.shape)]))} for k, v in truth.items()
    ] + [{"label": 24, "X": float("nan"), "Y": 1.0, "Z": 1.0}]
    (der / "sub-ct01_seg-subreg_ctd.json").write_text(json.dumps(entries))
    config = load_site_config({"name": "verse", "format": "verse", "root": str(root)})
    manifest, failures = build_manifest([config])
    assert [(f.case_id, f.error_type) for f in failures] == [("verse/sub-ct01_dir-ax", "MissingLabel")]
    row = manifest.set_index("case_id", drop=False).loc["verse/sub-ct01"]
    assert (row["case_id"], row["patient_id"], row["label_map"]) == ("verse/sub-ct01", "sub-ct01", "verse")
    loaded = load_verse_centroids(row["centroids_path"], arr.shape, nib.aff2axcodes(mask.affine), spacing)
    assert sorted(loaded) == [21, 22, 23]  # the NaN entry is skipped, as VerSe's load_centroids does
    for k in truth:
        np.testing.assert_allclose(loaded[k], truth[k], atol=1e-9)


def test_verse_centroid_file_errors(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps([{"label": 1, "X": 0, "Y": 0, "Z": 0}]))
    with pytest.raises(ValueError, match="expected a VerSe list starting with"):
        load_verse_centroids(bad, (2, 2, 2), ("P", "I", "R"), (1, 1, 1))
    bad.write_text(json.dumps([{"direction": ["P", "P", "R"]}]))
    with pytest.raises(ValueError, match="direction must name three axes"):
        load_verse_centroids(bad, (2, 2, 2), ("P", "I", "R"), (1, 1, 1))
