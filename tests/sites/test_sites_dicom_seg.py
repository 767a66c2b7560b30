"""DICOM SEG reference masks: written by highdicom (the oracle) from known label arrays, read back on the series grid."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_testlib import read_series_datasets, write_series_from_nifti
from pydicom.uid import generate_uid

from audit.sites import build_manifest, load_site_config
from audit.sites.base import SiteDataError
from audit.sites.dicom import series_geometry
from audit.sites.dicom_seg import DicomSegError, is_dicom_seg, read_seg_on_grid

SCHEME = "99SPINEAUDIT"  # a private coding scheme (DICOM's "99" prefix): the tests map segments by label or meaning
STRUCTURES = {"Vertebral body": "VB", "Intervertebral disc": "IVD", "Spinal canal": "CANAL"}


def segment(number: int, label: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept(STRUCTURES[label], SCHEME, label),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def write_seg(path, sources: list[pydicom.Dataset], labels: np.ndarray, names: list[str], *, fractional: bool = False, overlap_with: np.ndarray | None = None) -> None:
    """A SEG of ``labels`` (nibabel order, values 1..len(names) = segment numbers) over ``sources`` (slice order).

    With ``overlap_with``, segment 1 is given as its own binary mask (so it may overlap the others).
    """
    frames = np.stack([labels[:, :, k].T for k in range(labels.shape[2])])  # (slices, rows, cols)
    if overlap_with is not None or fractional:
        masks = [frames == n for n in range(1, len(names) + 1)]
        if overlap_with is not None:
            masks[0] = np.stack([overlap_with[:, :, k].T for k in range(labels.shape[2])])
        pixels = np.stack(masks, axis=-1).astype(np.float32 if fractional else np.uint8)
        if fractional:
            pixels *= 0.8  # 0.8 of the maximum: above the 0.5 threshold
    else:
        pixels = frames.astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment(i + 1, n) for i, n in enumerate(names)],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="spine-audit tests",
        manufacturer_model_name="highdicom",
        software_versions=hd.__version__,
        device_serial_number="0",
    )
    seg.save_as(path)


def tptbox_reference(shared_data) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The real TPTBox image and its CSpineSeg-style label (1 vertebral body, 2 disc; SOURCES.md)."""
    folder = shared_data / "tptbox-cervical-mri"
    image = nib.load(folder / "sub-mri_label-6_T2w.nii.gz")
    subregion = np.asarray(nib.load(folder / "sub-mri_seg-subreg_label-6_msk.nii.gz").dataobj)
    return image, np.where(subregion == 49, 1, np.where(subregion == 100, 2, 0)).astype(np.uint8)


def small_case(tmp_path, *, n_labels: int = 2):
    """An oblique 7x5x6 volume written as a series, with blocky labels 1..n_labels (some slices empty)."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag([0.6, 0.8, 3.5])
    affine[:3, 3] = [-12.0, 30.5, 7.25]
    image = nib.Nifti1Image(np.arange(7 * 5 * 6, dtype=np.uint16).reshape(7, 5, 6), affine)
    labels = np.zeros((7, 5, 6), np.uint8)
    labels[1:4, 1:3, 1:3] = 1
    labels[4:6, 2:5, 2:4] = 2
    if n_labels > 2:
        labels[0:2, 3:5, 3] = 3
    paths = write_series_from_nifti(image, tmp_path / "case")
    return image, labels, read_series_datasets(paths)


@pytest.mark.realdata
def test_real_tptbox_seg_through_the_adapter_equals_the_label_it_was_written_from(tmp_path, shared_data, monkeypatch):
    """Real PIR scan -> DICOM series + highdicom SEG inside the case folder -> adapter -> NIfTI label voxel for voxel."""
    image, expected = tptbox_reference(shared_data)
    sources = read_series_datasets(write_series_from_nifti(image, tmp_path / "root" / "case01"))
    # segments numbered disc first: the site maps them by label, so numbering does not matter
    swapped = np.where(expected == 1, 2, np.where(expected == 2, 1, 0)).astype(np.uint8)
    write_seg(tmp_path / "root" / "case01" / "seg.dcm", sources, swapped, ["Intervertebral disc", "Vertebral body"])
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k")
    config = load_site_config({
        "name": "dcm", "format": "dicom", "root": str(tmp_path / "root"), "label_map": "cspineseg",
        "options": {"labels": "seg", "seg_segments": {"Vertebral body": 1, "Intervertebral disc": 2}, "cache_dir": str(tmp_path / "cache")},
    })  # fmt: skip
    manifest, failures = build_manifest([config])
    assert failures == []
    row = manifest.iloc[0]
    label = nib.load(row["label_path"])
    np.testing.assert_array_equal(np.asarray(label.dataobj), expected)
    np.testing.assert_allclose(label.affine, nib.load(row["image_path"]).affine, atol=1e-9)
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-6)
    assert (expected == 1).sum() > 1000 and (expected == 2).sum() > 100  # the real structures are there
    again, _ = build_manifest([config])
    assert again.iloc[0]["label_path"] == row["label_path"]  # cached


def test_default_values_are_segment_numbers_and_empty_frames_may_be_omitted(tmp_path):
    image, labels, sources = small_case(tmp_path, n_labels=3)
    write_seg(tmp_path / "seg.dcm", sources, labels, ["Vertebral body", "Intervertebral disc", "Spinal canal"])
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert is_dicom_seg(ds) and is_dicom_seg(tmp_path / "seg.dcm") and not is_dicom_seg(sources[0])
    assert int(ds.NumberOfFrames) < 3 * labels.shape[2]  # highdicom leaves out empty frames
    affine, _ = series_geometry(sources)
    out = read_seg_on_grid(tmp_path / "seg.dcm", affine, labels.shape, series_uid=str(sources[0].SeriesInstanceUID))
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_allclose(affine, image.affine, atol=1e-6)  # the series grid is the image's


def test_mapping_by_code_meaning_and_fractional_segs(tmp_path):
    _, labels, sources = small_case(tmp_path)
    write_seg(tmp_path / "seg.dcm", sources, labels, ["Vertebral body", "Intervertebral disc"], fractional=True)
    affine, _ = series_geometry(sources)
    # keys are matched case-insensitively against SegmentLabel, then CodeMeaning, then CodeValue
    out = read_seg_on_grid(tmp_path / "seg.dcm", affine, labels.shape, segment_values={"IVD": 7, "vertebral BODY": 4})
    np.testing.assert_array_equal(out, np.select([labels == 1, labels == 2], [4, 7], 0))


def test_overlapping_segments_are_an_error_unless_the_last_wins(tmp_path):
    _, labels, sources = small_case(tmp_path)
    grown = labels == 1
    grown[4, 2:4, 2] = True  # two voxels of segment 1 inside segment 2
    write_seg(tmp_path / "seg.dcm", sources, labels, ["Vertebral body", "Intervertebral disc"], overlap_with=grown)
    affine, _ = series_geometry(sources)
    with pytest.raises(DicomSegError, match=r"segments 1 and 2: 2 voxels.*seg_overlap: last"):
        read_seg_on_grid(tmp_path / "seg.dcm", affine, labels.shape)
    np.testing.assert_array_equal(read_seg_on_grid(tmp_path / "seg.dcm", affine, labels.shape, overlap="last"), labels)


def test_bad_segs_become_recorded_case_failures(tmp_path, monkeypatch):
    """Another series' SEG, an unknown segment, a SEG on another grid, no SEG: each a failure naming the cause."""
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k")
    root = tmp_path / "root"
    image, labels, _ = small_case(tmp_path / "a")
    make = {}
    for name in ("good", "other_series", "unknown_segment", "off_grid", "no_seg"):
        make[name] = read_series_datasets(write_series_from_nifti(image, root / name))
    write_seg(root / "good" / "seg.dcm", make["good"], labels, ["Vertebral body", "Intervertebral disc"])
    write_seg(root / "other_series" / "seg.dcm", make["good"], labels, ["Vertebral body", "Intervertebral disc"])
    write_seg(root / "unknown_segment" / "seg.dcm", make["unknown_segment"], labels, ["Vertebral body", "Spinal canal"])
    shifted = nib.Nifti1Image(np.asarray(image.dataobj), image.affine @ np.array([[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    elsewhere = read_series_datasets(write_series_from_nifti(shifted, tmp_path / "elsewhere"))
    for ds in elsewhere:  # same series identity, frames half a voxel off the case's grid
        ds.SeriesInstanceUID = make["off_grid"][0].SeriesInstanceUID
        ds.FrameOfReferenceUID = make["off_grid"][0].FrameOfReferenceUID
        ds.StudyInstanceUID = make["off_grid"][0].StudyInstanceUID
    write_seg(root / "off_grid" / "seg.dcm", elsewhere, labels, ["Vertebral body", "Intervertebral disc"])
    config = load_site_config({
        "name": "dcm", "format": "dicom", "root": str(root), "label_map": "cspineseg",
        "options": {"labels": "seg", "seg_segments": {"Vertebral body": 1, "Intervertebral disc": 2}, "cache_dir": str(tmp_path / "cache")},
    })  # fmt: skip
    manifest, failures = build_manifest([config])
    assert manifest["case_id"].tolist() == ["dcm/good"]
    errors = {f.case_id: f.error for f in failures}
    assert set(errors) == {"dcm/other_series", "dcm/unknown_segment", "dcm/off_grid", "dcm/no_seg"}
    assert "references series" in errors["dcm/other_series"]
    assert "'Spinal canal'" in errors["dcm/unknown_segment"] and "seg_segments" in errors["dcm/unknown_segment"]
    assert "falls between voxels" in errors["dcm/off_grid"]
    assert "found 0" in errors["dcm/no_seg"]
    assert all(f.stage == "adapter" and f.error_type == "DicomSegError" for f in failures)


def test_a_seg_file_named_by_the_labels_pattern(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k")
    image, labels, _ = small_case(tmp_path / "a")
    sources = read_series_datasets(write_series_from_nifti(image, tmp_path / "root" / "images" / "c1"))
    (tmp_path / "root" / "segs").mkdir()
    write_seg(tmp_path / "root" / "segs" / "c1.dcm", sources, labels, ["Vertebral body", "Intervertebral disc"])
    config = load_site_config({
        "name": "dcm", "format": "dicom", "root": str(tmp_path / "root"), "label_map": "cspineseg",
        "options": {"images": "images", "labels": "segs/{case_id}.dcm", "cache_dir": str(tmp_path / "cache")},
    })  # fmt: skip
    manifest, failures = build_manifest([config])
    assert failures == []
    np.testing.assert_array_equal(np.asarray(nib.load(manifest.iloc[0]["label_path"]).dataobj), labels)


def test_seg_options_are_validated(tmp_path):
    (tmp_path / "root").mkdir()
    for options, match in (({"seg_overlap": "first"}, r"seg_overlap: allowed values are \['error', 'last'\]; got 'first'"),
                           ({"seg_segments": {"Vertebral body": 0}}, r"seg_segments: expected")):  # fmt: skip
        config = load_site_config({"name": "dcm", "format": "dicom", "root": str(tmp_path / "root"), "label_map": "cspineseg", "options": options})
        with pytest.raises(SiteDataError, match=match):
            build_manifest([config])
