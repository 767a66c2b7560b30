"""Geometry: canonical orientation (vs nibabel), resampling (vs analytic ramps and nibabel/scipy), round trips."""

from __future__ import annotations

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest

from audit.harmonize.geometry import Volume, load_volume, reorient, resample_to_grid, resample_to_spacing, save_volume

REAL = {
    "tptbox-PIR": "tptbox-cervical-mri/sub-mri_seg-subreg_label-6_msk.nii.gz",
    "sct-PSR": "sct-cervical/t2/t2_seg-manual.nii.gz",
    "totalseg-LPS": "totalseg-mr/example_seg_mr.nii.gz",
}


def ramp_volume(shape=(10, 12, 6), spacing=(1.0, 1.5, 3.0), origin=(5.0, -7.0, 2.0)) -> Volume:
    """Intensity = world x + 2 y + 3 z: linear, so linear resampling must reproduce it exactly inside the grid."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk * np.asarray(spacing) + np.asarray(origin)
    return Volume((world @ np.array([1.0, 2.0, 3.0])).astype(np.float32), affine)


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(REAL), ids=list(REAL))
def test_reorient_matches_nibabel_canonical_and_round_trips_exactly(name, shared_data):
    path = shared_data / REAL[name]
    vol = load_volume(path)
    canon = reorient(vol, "RAS")
    oracle = nib.as_closest_canonical(nib.load(path))
    assert canon.orientation == "RAS"
    np.testing.assert_array_equal(canon.array, np.asanyarray(oracle.dataobj))
    np.testing.assert_allclose(canon.affine, oracle.affine, atol=1e-5)
    back = resample_to_grid(canon.array, canon.affine, vol.shape, vol.affine, order=0)
    np.testing.assert_array_equal(back, vol.array)


@pytest.mark.parametrize("codes", ["PIR", "LPS", "SAL"], ids=["PIR", "LPS", "SAL"])
def test_reorient_to_any_orientation_keeps_world_positions(codes):
    vol = ramp_volume()
    out = reorient(vol, codes)
    assert out.orientation == codes
    # value at each voxel is a function of its world position: recompute from the new affine
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    world = (out.affine[:3, :3] @ ijk.T).T + out.affine[:3, 3]
    np.testing.assert_allclose(out.array.reshape(-1), world @ [1.0, 2.0, 3.0], atol=1e-4)


def test_resample_to_spacing_reproduces_a_linear_ramp():
    vol = ramp_volume()
    out = resample_to_spacing(vol, (0.5, 1.0, 2.0), order=1)
    assert out.spacing == pytest.approx((0.5, 1.0, 2.0))
    assert out.shape == (20, 18, 9)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    world = (out.affine[:3, :3] @ ijk.T).T + out.affine[:3, 3]
    expected = world @ [1.0, 2.0, 3.0]
    # voxel centres outside the old grid are clamped (mode nearest); check interior points exactly
    inside = np.all((np.linalg.inv(vol.affine)[:3, :3] @ world.T).T + np.linalg.inv(vol.affine)[:3, 3] <= np.array(vol.shape) - 1, axis=1)
    inside &= np.all((np.linalg.inv(vol.affine)[:3, :3] @ world.T).T + np.linalg.inv(vol.affine)[:3, 3] >= 0, axis=1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out.array.reshape(-1)[inside], expected[inside], atol=1e-3)
    # field-of-view centre is preserved
    centre = lambda v: v.affine @ np.r_[(np.array(v.shape) - 1) / 2, 1]  # noqa: E731
    np.testing.assert_allclose(centre(out), centre(vol), atol=1e-9)


def test_resample_to_grid_matches_nibabel_for_an_oblique_grid():
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 10, 8)) * 4).astype(np.uint8)
    src_affine = np.diag([1.0, 1.2, 2.5, 1.0])
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    tgt_affine = np.eye(4)
    tgt_affine[:3, :3] = rot @ np.diag([0.9, 0.9, 2.0])
    tgt_affine[:3, 3] = [1.0, 0.5, 1.0]
    ours = resample_to_grid(labels, src_affine, (14, 12, 9), tgt_affine, order=0)
    oracle = nibabel.processing.resample_from_to(nib.Nifti1Image(labels, src_affine), ((14, 12, 9), tgt_affine), order=0, mode="constant")
    # compare where the source position is strictly inside the source grid: the two libraries treat the
    # half-voxel rim outside the outermost voxel centres differently (scipy "constant" vs "grid-constant")
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (14, 12, 9)], indexing="ij"), -1).reshape(-1, 3)
    m = np.linalg.inv(src_affine) @ tgt_affine
    src = (m[:3, :3] @ ijk.T).T + m[:3, 3]
    inside = np.all((src > 0.01) & (src < np.array(labels.shape) - 1.01), axis=1).reshape(14, 12, 9)
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(ours[inside], np.asarray(oracle.dataobj)[inside])
    assert np.all(ours[~inside & ~np.any(np.abs(src.reshape(14, 12, 9, 3) - np.array(labels.shape) / 2) < np.array(labels.shape) / 2 + 0.6, axis=-1)] == 0)


def test_save_volume_is_atomic_and_keeps_affine(tmp_path):
    vol = ramp_volume()
    path = save_volume(vol.array, vol.affine, tmp_path / "sub" / "x.nii.gz")
    img = nib.load(path)
    np.testing.assert_array_equal(img.affine, vol.affine.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.array)
    assert [p.name for p in path.parent.iterdir()] == ["x.nii.gz"]


@pytest.mark.parametrize("bad", ["RAR", "XYZ", "RA"], ids=["repeated", "letters", "short"])
def test_reorient_rejects_bad_codes(bad):
    with pytest.raises(ValueError, match="orientation"):
        reorient(ramp_volume(), bad)


def test_volume_rejects_singular_affine():
    with pytest.raises(ValueError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
