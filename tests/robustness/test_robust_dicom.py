"""Fuzz corpus (DICOM): a series whose headers declare a matrix past the voxel budget fails its case before any
pixel data is decoded; the other case of the site is read as usual."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sites"))  # the DICOM writer of the site tests
from dicom_testlib import write_series_from_nifti  # noqa: E402

from audit.harmonize.limits import DEFAULT_MAX_VOXELS  # noqa: E402
from audit.sites import build_manifest, load_site_config  # noqa: E402


def small_volume() -> nib.Nifti1Image:
    return nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.uint16).reshape(6, 5, 4), np.diag([0.8, 0.8, 3.0, 1.0]))


def declare_huge_matrix(folder: Path, side: int) -> None:
    """Rewrite each slice's Rows/Columns to ``side`` (the pixel data stays small: a lying header)."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = side
        ds.save_as(path)


def test_a_series_declaring_a_huge_matrix_fails_its_case_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for case in ("good", "bomb"):
        write_series_from_nifti(small_volume(), root / case)
    side = 65535  # 65535^2 x 4 slices > the default voxel budget
    assert side * side * 4 > DEFAULT_MAX_VOXELS
    declare_huge_matrix(root / "bomb", side)
    (root / "labels").mkdir()
    for case in ("good", "bomb"):
        nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.uint8), np.eye(4)), root / "labels" / f"{case}.nii.gz")
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k")
    config = load_site_config({"name": "dcm", "format": "dicom", "root": str(root), "label_map": "spine_audit",
                               "options": {"cache_dir": str(tmp_path / "cache")}})
    manifest, failures = build_manifest([config])
    assert [(f.case_id, f.error_type) for f in failures] == [("dcm/bomb", "ImageTooLargeError")]
    assert "limits.max_voxels" in failures[0].error and "DICOM series in bomb" in failures[0].error
    assert sorted(manifest["case_id"]) == ["dcm/good"]  # the adapter failure keeps no row; the pipeline adds one
    assert not any("bomb" in p.name for p in (tmp_path / "cache").iterdir())  # nothing was converted
