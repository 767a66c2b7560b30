"""DICOM series adapter: volume and affine rebuilt from slices equal the NIfTI they were written from."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_testlib import write_series_from_nifti

from audit.sites import build_manifest, load_site_config
from audit.sites.dicom import DicomSeriesError, read_series, series_geometry

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TPTBOX = DATA / "tptbox-cervical-mri" / "sub-mri_label-6_T2w.nii.gz"


def oblique_nifti() -> nib.Nifti1Image:
    """A small oblique volume (rotated 20 degrees about x, anisotropic) with distinct voxel values."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.6, 0.8, 3.5])
    affine[:3, 3] = [-12.0, 30.5, 7.25]
    data = np.arange(7 * 5 * 6, dtype=np.uint16).reshape(7, 5, 6) * 3
    return nib.Nifti1Image(data, affine)


def assert_same_volume(img: nib.Nifti1Image, expected: nib.Nifti1Image) -> None:
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(img.affine, expected.affine, atol=1e-6)  # 10-decimal DS strings


def test_oblique_series_roundtrip(tmp_path):
    nifti = oblique_nifti()
    write_series_from_nifti(nifti, tmp_path / "s")
    assert_same_volume(read_series(sorted((tmp_path / "s").iterdir())), nifti)


@pytest.mark.skipif(not TPTBOX.is_file(), reason=f"real data not found: {TPTBOX} (see ../shared/data/SOURCES.md)")
def test_real_tptbox_series_roundtrip_through_the_adapter(tmp_path, monkeypatch):
    """Real PIR cervical MRI -> DICOM slices -> adapter -> cached NIfTI equal to the original (volume and affine)."""
    real = nib.load(TPTBOX)
    tags = {"Manufacturer": "SIEMENS", "ManufacturerModelName": "Avanto", "MagneticFieldStrength": "1.494",
            "PatientAge": "045Y", "PatientSex": "F", "EthnicGroup": "WHITE"}
    write_series_from_nifti(real, tmp_path / "root" / "case01", tags=tags)
    write_series_from_nifti(real, tmp_path / "root" / "case02", tags=tags, drop=(30,))  # a missing slice
    (tmp_path / "root" / "labels").mkdir()
    nib.save(nib.Nifti1Image(np.zeros(real.shape, np.uint8), real.affine), tmp_path / "root" / "labels" / "case01.nii.gz")
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k")
    config = load_site_config({"name": "dcm", "format": "dicom", "root": str(tmp_path / "root"), "label_map": "cspineseg",
                               "options": {"cache_dir": str(tmp_path / "cache")}})
    manifest, failures = build_manifest([config])
    assert [(f.case_id, f.error_type) for f in failures] == [("dcm/case02", "DicomSeriesError")]
    assert "missing slice" in failures[0].error
    row = manifest.iloc[0]
    assert Path(row["image_path"]).parent == tmp_path / "cache"
    assert_same_volume(nib.load(row["image_path"]), real)
    assert "".join(nib.aff2axcodes(nib.load(row["image_path"]).affine)) == "PIR"
    assert (row["vendor"], row["field_strength"], row["age_years"], row["sex"], row["race"]) == ("Siemens", "1.5T", 45.0, "F", "White")
    flat = " ".join(str(v) for v in manifest.iloc[0].to_numpy())
    for secret in ("Doe", "MRN-12345", "19700101"):
        assert secret not in flat  # identifying tags never leave the adapter
    again, _ = build_manifest([config])  # cache reuse gives the same file
    assert again.iloc[0]["image_path"] == row["image_path"]


def test_series_geometry_rejects_mixed_orientation(tmp_path):
    nifti = oblique_nifti()
    write_series_from_nifti(nifti, tmp_path / "s")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((tmp_path / "s").iterdir())]
    headers[2].ImageOrientationPatient = [1, 0, 0, 0, 0, 1]
    with pytest.raises(DicomSeriesError, match="differ in ImageOrientationPatient"):
        series_geometry(headers)
    with pytest.raises(DicomSeriesError, match="at least 2"):
        series_geometry(headers[:1])
