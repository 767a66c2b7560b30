"""The guarded NIfTI reader: same arrays and affines as nibabel on good files, refusals from the header on bad ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from audit.harmonize.limits import ImageTooLargeError, ReadLimits
from audit.harmonize.loading import CorruptImageError, ImageDataError, load_label_array, load_nifti, read_header

AFFINE = np.array([[0.0, 0.0, -3.0, 10.0], [-0.5, 0.0, 0.0, 20.0], [0.0, -0.6, 0.0, -5.0], [0.0, 0.0, 0.0, 1.0]])  # PIR


def written(tmp_path: Path, img: nib.spatialimages.SpatialImage, name: str) -> Path:
    path = tmp_path / name
    nib.save(img, path)
    return path


@pytest.mark.parametrize(
    ("klass", "dtype", "name"),
    [(nib.Nifti1Image, np.int16, "a.nii.gz"), (nib.Nifti1Image, np.float32, "b.nii"), (nib.Nifti2Image, np.uint8, "c.nii.gz"), (nib.Nifti1Image, ">f8", "d.nii.gz")],
    ids=["nifti1-int16-gz", "nifti1-float32", "nifti2-uint8-gz", "big-endian-float64"],
)
def test_arrays_and_affines_equal_nibabel(tmp_path, klass, dtype, name):
    data = (np.arange(7 * 5 * 3).reshape(7, 5, 3) % 251).astype(dtype)
    path = written(tmp_path, klass(data, AFFINE), name)
    ours, oracle = load_nifti(path), nib.load(path)
    np.testing.assert_array_equal(ours.array, np.asanyarray(oracle.dataobj))  # nibabel is the oracle
    np.testing.assert_allclose(ours.affine, oracle.affine, rtol=0, atol=1e-6)
    assert ours.array.dtype.isnative and ours.shape == (7, 5, 3)


def test_scale_factors_are_applied_as_nibabel_does(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    path = written(tmp_path, img, "scaled.nii.gz")
    np.testing.assert_allclose(load_nifti(path).array, nib.load(path).get_fdata(), rtol=0, atol=0)
    labels = load_label_array(written(tmp_path, nib.Nifti1Image(np.full((2, 2, 2), 3.0, np.float32), AFFINE), "lab.nii.gz"))
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) == {3}


def test_real_files_read_identically(shared_data):
    files = sorted(shared_data.rglob("*.nii.gz"))
    assert files
    for path in files:
        ours, oracle = load_nifti(path), nib.load(path)
        np.testing.assert_array_equal(ours.array, np.asanyarray(oracle.dataobj).reshape(ours.shape), err_msg=str(path))
        np.testing.assert_allclose(ours.affine, oracle.affine, rtol=0, atol=1e-5, err_msg=str(path))


def test_the_budget_is_checked_from_the_header_alone(tmp_path):
    path = written(tmp_path, nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), AFFINE), "ten.nii.gz")
    assert read_header(path, limits=ReadLimits(max_voxels=1000)).shape == (10, 10, 10)
    with pytest.raises(ImageTooLargeError, match=r"shape \(10, 10, 10\) = 1000 voxels; limits.max_voxels is 999"):
        read_header(path, limits=ReadLimits(max_voxels=999))
    with pytest.raises(ImageTooLargeError, match=r"0.0 MiB of voxel data .*limits.max_memory_mb is 0.001"):
        load_nifti(path, limits=ReadLimits(max_memory_mb=0.001))  # 2000 bytes declared > 1048 bytes allowed


@pytest.mark.parametrize(("max_voxels", "max_memory_mb"), [(0, 1.0), (10, 0.0), (10, float("nan")), (True, 1.0), (1.5, 1.0)])
def test_limits_must_be_positive(max_voxels, max_memory_mb):
    with pytest.raises(ValueError, match="must be a positive"):
        ReadLimits(max_voxels=max_voxels, max_memory_mb=max_memory_mb)


def test_truncated_and_overlong_files_are_refused(tmp_path):
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), AFFINE)
    raw = img.to_bytes()
    with pytest.raises(CorruptImageError, match=r"truncated: 700 bytes of the 864"):
        load_nifti(gzip.compress(raw[:700]), name="short.nii.gz")
    with pytest.raises(CorruptImageError, match="holds more data than its header declares"):
        load_nifti(raw + b"\0", name="long.nii")
    with pytest.raises(CorruptImageError, match="sizeof_hdr is neither 348 nor 540"):
        load_nifti(b"\0" * 400, name="zeros.nii")


def test_pairs_negative_dims_and_complex_voxels_are_refused():
    pair = nib.Nifti1Pair(np.zeros((2, 2, 2), np.uint8), AFFINE)
    with pytest.raises(CorruptImageError, match="magic b'ni1'"):
        read_header(pair.header.binaryblock + b"\0" * 4, name="pair.hdr")
    header = nib.Nifti1Header()
    header.set_sform(AFFINE, code=1)
    header["dim"][:4] = [3, 4, -4, 4]
    with pytest.raises(CorruptImageError, match="negative dimension"):
        read_header(header.binaryblock + b"\0" * 4, name="neg.nii")
    with pytest.raises(ImageDataError, match="voxel type complex64 is not supported"):
        load_nifti(nib.Nifti1Image(np.zeros((2, 2, 2), np.complex64), AFFINE).to_bytes(), name="complex.nii")


def test_an_unset_vox_offset_means_right_after_the_header():
    img = nib.Nifti1Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), AFFINE)
    raw = bytearray(img.to_bytes())
    assert int(np.frombuffer(bytes(raw[108:112]), "<f4")[0]) == 352
    raw[108:112] = np.float32(0).tobytes()
    np.testing.assert_array_equal(load_nifti(bytes(raw), name="zero-offset.nii").array, np.arange(8).reshape(2, 2, 2))


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"max_voxels": 0}, "limits.max_voxels: must be a positive integer; found 0"), ({"max_memory": 1}, "limits.max_memory: unknown key")],
    ids=["zero", "typo"],
)
def test_protocol_limits_are_validated_with_the_field_path(limits, message):
    import yaml

    from audit.cli import demo_protocol_path
    from audit.protocol import ProtocolError, protocol_from_dict

    data = yaml.safe_load(demo_protocol_path().read_text())
    assert protocol_from_dict(data).limits == ReadLimits()  # the defaults when the section is absent
    with pytest.raises(ProtocolError, match=message):
        protocol_from_dict({**data, "limits": limits})
