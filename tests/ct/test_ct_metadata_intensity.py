"""CT metadata vocabulary (kVp, slice thickness, kernel, contrast) and Hounsfield-unit handling."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from audit.harmonize.ct_metadata import (
    ct_raw_from_dicom,
    ct_raw_from_sidecar,
    harmonize_ct_metadata,
    normalize_contrast,
    normalize_kernel,
    normalize_kvp,
    normalize_slice_thickness,
)
from audit.harmonize.intensity import (
    IntensitySpec,
    hounsfield_warnings,
    hu_window,
    intensity_spec_from,
    normalize_intensity,
    to_hounsfield,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sites"))
from dicom_testlib import write_series_from_nifti  # noqa: E402


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(80, "<=90kVp"), (90, "<=90kVp"), ("100", "100kVp"), ("110 kV", "100kVp"), (120.0, "120kVp"), ("140kVp", ">=130kVp"), (None, "Unknown")],
)
def test_kvp_bands(raw, expected):
    assert normalize_kvp(raw)[1] == expected


def test_unmappable_values_warn_and_missing_values_do_not():
    warnings: list[str] = []
    assert normalize_kvp("high", warnings=warnings) == (pytest.approx(math.nan, nan_ok=True), "Unknown")
    assert normalize_kvp(1200, warnings=warnings)[1] == "Unknown"  # not a tube voltage
    assert normalize_slice_thickness("thin", warnings=warnings)[1] == "Unknown"
    assert normalize_kernel("FC18", warnings=warnings) == ("FC18", "Other")  # Canon: no vendor-neutral class claimed
    assert len(warnings) == 4 and all("unmapped value" in w for w in warnings)
    quiet: list[str] = []
    harmonize_ct_metadata({"kvp": None, "slice_thickness": "n/a", "kernel": "", "contrast": float("nan")}, warnings=quiet)
    assert quiet == []


@pytest.mark.parametrize(
    ("raw", "band"), [(0.625, "<=1mm"), (1.0, "<=1mm"), ("1.25", "1-2.5mm"), (2.5, "1-2.5mm"), (3, "2.5-5mm"), (5.0, "2.5-5mm"), (7.5, ">5mm")]
)
def test_slice_thickness_bands_are_closed_on_the_right(raw, band):
    assert normalize_slice_thickness(raw)[1] == band


@pytest.mark.parametrize(
    ("raw", "cls"),
    [("SOFT", "soft"), ("STANDARD", "standard"), ("BONEPLUS", "sharp"), ("LUNG", "lung"), ("B20f", "soft"), ("B30f", "standard"),
     ("Br40d", "standard"), ("B70f", "sharp"), ("Bl57d", "lung"), (["Br64d", "3"], "sharp"), ("I30f\\3", "standard"), ("YA", "Other")],
)
def test_kernel_classes(raw, cls):
    assert normalize_kernel(raw)[1] == cls


@pytest.mark.parametrize(("raw", "value"), [("OMNIPAQUE 350", "contrast"), ("None", "non-contrast"), ("no", "non-contrast"), (None, "Unknown"), ("", "Unknown")])
def test_contrast(raw, value):
    assert normalize_contrast(raw) == value


def test_dicom_and_sidecar_keys_split_into_general_and_ct():
    ds = pydicom.Dataset()
    ds.Manufacturer, ds.ManufacturerModelName, ds.KVP, ds.SliceThickness = "GE MEDICAL SYSTEMS", "LightSpeed VCT", "120", "0.625"
    ds.ConvolutionKernel = "BONE"
    general, ct = ct_raw_from_dicom(ds)
    assert general == {"vendor": "GE MEDICAL SYSTEMS", "scanner_model": "LightSpeed VCT"}
    out = harmonize_ct_metadata(ct)
    assert (out["kvp"], out["kvp_band"], out["slice_thickness_band"], out["kernel_class"], out["contrast"]) == (120.0, "120kVp", "<=1mm", "sharp", "Unknown")
    assert out["kernel_raw"] == "BONE" and out["contrast_raw"] is None
    general, ct = ct_raw_from_sidecar({"Manufacturer": "Philips", "ManufacturersModelName": "iCT 256", "SliceThickness": 2, "ConvolutionKernel": "B"})
    assert general["vendor"] == "Philips" and harmonize_ct_metadata(ct)["slice_thickness_band"] == "1-2.5mm"


def test_hounsfield_rescale_and_window():
    np.testing.assert_array_equal(to_hounsfield(np.array([0, 1024, 3071], np.uint16), 1, -1024), [-1024.0, 0.0, 2047.0])
    np.testing.assert_allclose(to_hounsfield(np.array([10, 20]), 0.5, -1000.0), [-995.0, -990.0])
    with pytest.raises(ValueError, match="RescaleSlope must be finite and non-zero"):
        to_hounsfield(np.zeros(2), 0.0, 0.0)
    np.testing.assert_allclose(hu_window(np.array([-600.0, -500.0, 400.0, 1300.0, 2000.0]), hu_min=-500, hu_max=1300), [0, 0, 0.5, 1, 1])


def test_ct_intensity_specs_parse_and_validate():
    spec = intensity_spec_from({"method": "ct_window", "window": {"level": 400, "width": 1800}})
    assert (spec.hu_min, spec.hu_max) == (-500.0, 1300.0)
    assert spec.to_dict() == {"method": "ct_window", "hu_min": -500.0, "hu_max": 1300.0}
    z = IntensitySpec("ct_clip_zscore", hu_min=-1000, hu_max=1000, mean=100.0, std=50.0)
    np.testing.assert_allclose(normalize_intensity(np.array([-3000.0, 100.0, 150.0, 5000.0]), z), [-22.0, 0.0, 1.0, 18.0])
    with pytest.raises(ValueError, match="'ct_clip_zscore' needs the training mean and std > 0"):
        IntensitySpec("ct_clip_zscore")
    with pytest.raises(ValueError, match="need hu_min < hu_max"):
        intensity_spec_from({"method": "ct_window", "hu_min": 100, "hu_max": 100})
    with pytest.raises(ValueError, match="window: expected"):
        intensity_spec_from({"method": "ct_window", "window": {"level": 40}})


@pytest.mark.realdata
def test_real_ct_is_recognised_as_hounsfield_units_and_stored_values_are_not(shared_data):
    hu = np.asarray(nib.load(shared_data / "tptbox-lumbar-ct" / "sub-ct_label-22_ct.nii.gz").dataobj)
    assert hounsfield_warnings(hu) == []
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)  # RescaleIntercept -1024 not applied
    assert any("RescaleIntercept" in w for w in hounsfield_warnings(stored))


@pytest.mark.realdata
def test_real_ct_dicom_series_with_per_slice_rescale_is_read_back_in_hu(shared_data, tmp_path, monkeypatch):
    """Real CT (HU) -> DICOM slices stored as HU - intercept_k with a different intercept per slice -> adapter -> HU."""
    from audit.sites import build_manifest, load_site_config

    real = nib.load(shared_data / "tptbox-lumbar-ct" / "sub-ct_label-22_ct.nii.gz")
    hu = np.asarray(real.dataobj).astype(np.int32)
    tags = {"Modality": "CT", "Manufacturer": "SIEMENS", "ManufacturerModelName": "SOMATOM Force", "KVP": "120", "ConvolutionKernel": ["Br40d", "3"],
            "ContrastBolusAgent": "None"}
    folder = tmp_path / "root" / "case01"
    stored_img = nib.Nifti1Image((hu + 1100).astype(np.uint16), real.affine)  # placeholder pixels, replaced below
    paths = write_series_from_nifti(stored_img, folder, tags=tags)
    for path in paths:
        ds = pydicom.dcmread(path)
        k = int(ds.InstanceNumber) - 1
        intercept = -1024.0 - 10.0 * k
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", "1"
        ds.PixelData = np.ascontiguousarray((hu[:, :, k] - intercept).T.astype(np.uint16)).tobytes()
        ds.save_as(path, enforce_file_format=True)
    (tmp_path / "root" / "labels").mkdir()
    nib.save(nib.Nifti1Image(np.zeros(real.shape, np.uint8), real.affine), tmp_path / "root" / "labels" / "case01.nii.gz")
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k")
    config = load_site_config({"name": "ct", "format": "dicom", "root": str(tmp_path / "root"), "label_map": "verse",
                               "options": {"cache_dir": str(tmp_path / "cache")}})
    manifest, failures = build_manifest([config])
    assert failures == []
    np.testing.assert_array_equal(np.asarray(nib.load(manifest.iloc[0]["image_path"]).dataobj), hu)
    row = manifest.iloc[0]
    assert (row["vendor"], row["kvp_band"], row["kernel"], row["kernel_class"], row["contrast"]) == ("Siemens", "120kVp", "Br40d", "standard", "non-contrast")
