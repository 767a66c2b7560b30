"""Hand-checkable tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from metrics_testlib import two_cubes_shifted_by

from audit.metrics import compute_case_metrics

ALL = ("dice", "iou", "hd", "hd95", "assd", "nsd_1mm", "rel_volume_error", "abs_volume_error_ml", "dice_slicewise_cspineseg")


def values(ref, pred, spacing, metrics=ALL, **kw):
    t = compute_case_metrics(ref, pred, spacing=spacing, structures={"s": (1,)}, metrics=metrics, **kw)
    return dict(zip(t["metric"], t["value"]))


@pytest.mark.parametrize(
    ("k", "axis", "spacing"),
    [(1, 0, (0.5, 0.5, 4.0)), (2, 0, (0.5, 0.5, 4.0)), (1, 2, (0.5, 0.5, 4.0)), (3, 1, (1.0, 2.0, 1.0))],
    ids=["k1-inplane", "k2-inplane", "k1-through-plane", "k3-axis1"],
)
def test_two_cubes_shifted_by_k(k, axis, spacing):
    size = 6
    ref, pred = two_cubes_shifted_by(k, size=size, axis=axis)
    v = values(ref, pred, spacing)
    # Hand: overlap (size-k)/size of each cube; HD = k voxels along the shift axis.
    np.testing.assert_allclose(v["dice"], (size - k) / size, rtol=1e-12)
    np.testing.assert_allclose(v["iou"], (size - k) / (size + k), rtol=1e-12)
    np.testing.assert_allclose(v["hd"], k * spacing[axis], rtol=1e-12)
    np.testing.assert_allclose(v["rel_volume_error"], 0.0, atol=1e-15)
    np.testing.assert_allclose(v["abs_volume_error_ml"], 0.0, atol=1e-15)


def test_single_voxels_at_known_distance():
    ref = np.zeros((5, 5, 5), np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 1, 1] = 1
    pred[2, 2, 2] = 1  # one voxel diagonal: distance sqrt(0.5^2 + 0.5^2 + 4^2)
    d = math.sqrt(0.25 + 0.25 + 16.0)
    v = values(ref, pred, (0.5, 0.5, 4.0), metrics=("dice", "hd", "hd95", "assd", "nsd_4mm", "nsd_4.1mm"))
    assert v["dice"] == 0.0
    for name in ("hd", "hd95", "assd"):
        np.testing.assert_allclose(v[name], d, rtol=1e-12, err_msg=name)
    assert v["nsd_4mm"] == 0.0 and v["nsd_4.1mm"] == 1.0


def test_nsd_tolerance_equal_to_grid_distance_counts_as_within():
    ref, pred = two_cubes_shifted_by(1, axis=0)
    v = values(ref, pred, (0.7, 0.7, 0.7), metrics=("nsd_0.7mm", "nsd_0.69mm"))
    assert v["nsd_0.7mm"] == 1.0  # every surface voxel is at most one 0.7 mm step away
    assert v["nsd_0.69mm"] < 1.0


def test_volumes_in_ml_and_relative_error():
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[:4, :5, :5] = 1  # 100 voxels
    pred[:5, :5, :5] = 1  # 125 voxels
    t = compute_case_metrics(ref, pred, spacing=(1.0, 2.0, 5.0), structures={"s": (1,)}, metrics=("rel_volume_error", "abs_volume_error_ml"))
    np.testing.assert_allclose(t["reference_volume_ml"], 100 * 10 / 1000)
    np.testing.assert_allclose(t["predicted_volume_ml"], 125 * 10 / 1000)
    v = dict(zip(t["metric"], t["value"]))
    np.testing.assert_allclose(v["rel_volume_error"], 0.25, rtol=1e-12)
    np.testing.assert_allclose(v["abs_volume_error_ml"], 0.25, rtol=1e-12)


def test_cspineseg_slicewise_dice_by_hand():
    # 4 slices along axis 2. Slice 0: identical (1); slice 1: ref 2 voxels, pred 0 (0);
    # slice 2: ref 2, pred 2 overlapping 1 (0.5); slice 3: empty in both (1). Mean = 2.5 / 4.
    ref = np.zeros((3, 3, 4), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, 0] = pred[0, 0, 0] = 1
    ref[0, 0:2, 1] = 1
    ref[1, 0:2, 2] = 1
    pred[1, 1:3, 2] = 1
    v = values(ref, pred, (0.5, 0.5, 4.0), metrics=("dice_slicewise_cspineseg", "dice"))
    np.testing.assert_allclose(v["dice_slicewise_cspineseg"], 2.5 / 4, rtol=1e-12)
    np.testing.assert_allclose(v["dice"], 2 * 2 / (5 + 3), rtol=1e-12)  # volumetric Dice differs


def test_cspineseg_slicewise_dice_counts_slices_outside_the_crop():
    ref = np.zeros((8, 8, 20), np.uint8)
    ref[2:5, 2:5, 3:5] = 1
    pred = np.zeros_like(ref)
    pred[2:5, 2:5, 3] = 1  # slice 3 perfect, slice 4 missed; the other 18 slices empty in both
    v = values(ref, pred, (0.5, 0.5, 4.0), metrics=("dice_slicewise_cspineseg",))
    np.testing.assert_allclose(v["dice_slicewise_cspineseg"], 19 / 20, rtol=1e-12)
    v_axis0 = values(ref, pred, (0.5, 0.5, 4.0), metrics=("dice_slicewise_cspineseg",), slice_axis=0)
    # along axis 0: slices 2..4 each have ref 6 voxels, pred 3 overlapping: 2*3/9; 5 empty slices score 1
    np.testing.assert_allclose(v_axis0["dice_slicewise_cspineseg"], (3 * 6 / 9 + 5) / 8, rtol=1e-12)
