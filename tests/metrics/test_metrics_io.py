"""Loading labels without float conversion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from metrics_testlib import DATA

from audit.metrics import load_labels


def test_integer_file_keeps_its_dtype():
    path = DATA / "tptbox-cervical-mri" / "sub-mri_seg-vert_label-6_msk.nii.gz"
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    arr, spacing = load_labels(path)
    assert arr.dtype == np.uint8 and spacing == (1.5, 1.5, 1.5)
    assert set(np.unique(arr)) == {0, 5, 6, 7, 105, 106, 205, 206, 207}


def test_float_stored_labels_become_integers():
    path = DATA / "sct-cervical" / "t2" / "t2_seg-manual_labeled.nii.gz"  # stored as float64
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    arr, _ = load_labels(path)
    assert np.issubdtype(arr.dtype, np.integer)
    assert set(np.unique(arr)) == {0, 2, 3, 4, 5}


def test_non_integer_labels_are_rejected(tmp_path):
    img = nib.Nifti1Image(np.full((3, 3, 3), 0.5, np.float32), np.diag([0.5, 0.5, 4.0, 1.0]))
    nib.save(img, tmp_path / "soft.nii.gz")
    with pytest.raises(ValueError, match="non-integer"):
        load_labels(tmp_path / "soft.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 2), np.int16), np.diag([0.5, 0.7, 4.0, 1.0])), tmp_path / "lab.nii.gz")
    arr, spacing = load_labels(tmp_path / "lab.nii.gz")
    assert arr.dtype == np.int16 and spacing == pytest.approx((0.5, 0.7, 4.0))


def test_trailing_singleton_dimension_is_dropped(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 4, 2, 1), np.uint8), np.diag([0.5, 0.7, 4.0, 1.0])), tmp_path / "lab4d.nii.gz")
    arr, spacing = load_labels(tmp_path / "lab4d.nii.gz")
    assert arr.shape == (3, 4, 2) and spacing == pytest.approx((0.5, 0.7, 4.0))
