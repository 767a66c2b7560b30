"""Image/label geometry and readability checks, each problem a per-case failure."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from audit.harmonize.checks import (
    CorruptImageError,
    GeometryMismatchError,
    check_case,
    check_geometry,
    geometry_problems,
    load_image_checked,
)

SPACING = (0.5, 0.5, 4.0)


def grid(shape=(6, 5, 4), spacing=SPACING, origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def image_with(affine: np.ndarray, shape=(6, 5, 4), dtype=np.int16) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(shape, dtype=dtype), affine)


def test_matching_grids_pass_within_float32_rounding():
    a = grid()
    b = a.astype(np.float32).astype(np.float64) + 1e-6
    check_geometry(image_with(a), image_with(b))
    assert geometry_problems((6, 5, 4, 1), a, (6, 5, 4), a) == []  # trailing singleton ignored


@pytest.mark.parametrize(
    ("label_affine", "label_shape", "expected"),
    [
        (grid(), (6, 5, 3), "shape: image (6, 5, 4) vs label (6, 5, 3)"),
        (grid(spacing=(0.5, 0.5, 4.2)), (6, 5, 4), "spacing:"),
        (grid(origin=(10.0, -20.0, 5.5)), (6, 5, 4), "origin:"),
        (np.diag([-0.5, 0.5, 4.0, 1.0]) + np.pad(np.array([[0, 0, 0, 10.0], [0, 0, 0, -20.0], [0, 0, 0, 5.0]]), ((0, 1), (0, 0))), (6, 5, 4), "direction: image RAS vs label LAS"),
    ],
    ids=["shape", "spacing-0.2mm", "origin-0.5mm", "flipped-x"],
)
def test_each_mismatch_is_named(label_affine, label_shape, expected):
    problems = geometry_problems((6, 5, 4), grid(), label_shape, label_affine)
    assert len(problems) == 1 and problems[0].startswith(expected)
    with pytest.raises(GeometryMismatchError, match=expected.split(":")[0]):
        check_geometry(image_with(grid()), image_with(label_affine, label_shape))


def test_tolerance_is_respected():
    shifted = grid(origin=(10.0, -20.0, 5.004))
    assert geometry_problems((6, 5, 4), grid(), (6, 5, 4), shifted) == []  # 0.004 mm < 0.01 mm
    assert len(geometry_problems((6, 5, 4), grid(), (6, 5, 4), shifted, atol_mm=0.001)) == 1


def write_truncated_nifti(path: Path) -> Path:
    nib.save(image_with(grid(), shape=(20, 20, 20)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_gzip_is_a_corrupt_image(tmp_path):
    path = write_truncated_nifti(tmp_path / "img.nii.gz")
    with pytest.raises(CorruptImageError, match="image .*img.nii.gz: cannot be read"):
        load_image_checked(path)


def test_not_gzip_at_all_is_a_corrupt_image(tmp_path):
    path = tmp_path / "img.nii.gz"
    path.write_bytes(b"not a nifti file at all")
    with pytest.raises(CorruptImageError):
        load_image_checked(path)
    with gzip.open(tmp_path / "short.nii.gz", "wb") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(CorruptImageError):
        load_image_checked(tmp_path / "short.nii.gz")


def test_check_case_collects_each_problem(tmp_path):
    nib.save(image_with(grid()), tmp_path / "img.nii.gz")
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1, 1, 1] = 1
    labels[2, 2, 2] = 9
    nib.save(nib.Nifti1Image(labels, grid(origin=(11.0, -20.0, 5.0))), tmp_path / "lab.nii.gz")
    result = check_case("S/c1", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", "cspineseg", site="S")
    assert [f.error_type for f in result.failures] == ["GeometryMismatchError", "UnknownLabelValuesError"]
    assert all(f.stage == "harmonize" and f.case_id == "S/c1" for f in result.failures)
    assert result.label_values == {0: 118, 1: 1, 9: 1} and result.unknown_values == (9,)
    assert result.shape == (6, 5, 4) and result.axcodes == "RAS"
    np.testing.assert_allclose(result.spacing_mm, SPACING, atol=1e-9)


def test_check_case_reports_corrupt_label(tmp_path):
    nib.save(image_with(grid()), tmp_path / "img.nii.gz")
    write_truncated_nifti(tmp_path / "lab.nii.gz")
    result = check_case("S/c2", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", "cspineseg", site="S")
    assert [f.error_type for f in result.failures] == ["CorruptImageError"]
    assert "label" in result.failures[0].error and not result.ok
