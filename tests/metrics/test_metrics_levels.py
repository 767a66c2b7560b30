"""Per-level detection and Dice: instance labels and CSpineSeg-style connected components."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_testlib import DATA

from audit.metrics import LEVEL_COLUMNS, compute_level_metrics, load_labels


def direct_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def shift_down(arr: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Shift by k voxels along axis without wrap-around (zeros enter at the top)."""
    out = np.zeros_like(arr)
    src = [slice(None)] * arr.ndim
    dst = [slice(None)] * arr.ndim
    src[axis], dst[axis] = slice(0, arr.shape[axis] - k), slice(k, None)
    out[tuple(dst)] = arr[tuple(src)]
    return out


def disc_and_body_stack(n_bodies: int = 4, *, body: int = 6, disc: int = 2, shape_xz=(20, 10)) -> np.ndarray:
    """CSpineSeg-style labels: bodies (1) and discs (2) alternating along axis 1 (superior = low index)."""
    depth = n_bodies * body + (n_bodies - 1) * disc + 4
    lab = np.zeros((shape_xz[0], depth, shape_xz[1]), np.uint8)
    y = 2
    for i in range(n_bodies):
        lab[4:16, y : y + body, 2:8] = 1
        y += body
        if i < n_bodies - 1:
            lab[5:15, y : y + disc, 2:8] = 2
            y += disc
    return lab


def test_components_hand_case_missed_spurious_and_order():
    ref = disc_and_body_stack()
    pred = ref.copy()
    pred[pred == 2] = 0
    pred[ref == 2] = 2
    discs_y = sorted({int(y) for y in np.nonzero(ref == 2)[1]})  # three discs, 2 voxels thick each
    second_disc = slice(discs_y[2], discs_y[3] + 1)
    pred[:, second_disc][pred[:, second_disc] == 2] = 0  # the model misses disc 2
    pred[0:2, 0:2, 0:2] = 2  # and adds a spurious disc at the top corner
    t = compute_level_metrics(ref, pred, spacing=(0.5, 0.5, 4.0), mode="components", si_axis=1, case_id="c",
                              level_names={"intervertebral_disc": ("C2-C3", "C3-C4", "C4-C5")})
    assert list(t.columns) == list(LEVEL_COLUMNS)
    discs = t[t["structure"] == "intervertebral_disc"]
    assert discs["level"].tolist() == ["C2-C3", "C3-C4", "C4-C5", "intervertebral_disc_fp1"]
    assert discs["detection"].tolist() == ["detected", "missed", "detected", "false_positive"]
    np.testing.assert_allclose(discs["dice"].to_numpy(), [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(discs["predicted_volume_ml"].iloc[-1], 8 * 0.5 * 0.5 * 4.0 / 1000)
    bodies = t[t["structure"] == "vertebral_body"]
    assert bodies["detection"].tolist() == ["detected"] * 4 and bodies["order"].tolist() == [1, 2, 3, 4]
    assert bodies["position_mm"].is_monotonic_increasing


def test_components_order_follows_superior_argument():
    ref = disc_and_body_stack()
    low = compute_level_metrics(ref, ref, spacing=(1, 1, 1), mode="components", si_axis=1, superior="low")
    high = compute_level_metrics(ref, ref, spacing=(1, 1, 1), mode="components", si_axis=1, superior="high")
    b_low = low[low["structure"] == "vertebral_body"]
    b_high = high[high["structure"] == "vertebral_body"]
    np.testing.assert_allclose(b_low["position_mm"].to_numpy(), b_high["position_mm"].to_numpy()[::-1])


def test_components_small_islands_are_dropped_when_asked():
    ref = disc_and_body_stack()
    pred = ref.copy()
    pred[0, 0, 0] = 1
    t_all = compute_level_metrics(ref, pred, spacing=(1, 1, 1), mode="components", si_axis=1)
    t_min = compute_level_metrics(ref, pred, spacing=(1, 1, 1), mode="components", si_axis=1, min_component_voxels=2)
    assert (t_all["detection"] == "false_positive").sum() == 1
    assert (t_min["detection"] == "false_positive").sum() == 0


def _tptbox(name):
    path = DATA / "tptbox-cervical-mri" / name
    if not path.exists():
        pytest.skip(f"real data not available: {path} (see ../shared/data/SOURCES.md)")
    return load_labels(path)


def test_components_on_real_cspineseg_style_labels_shifted_one_voxel():
    sub, spacing = _tptbox("sub-mri_seg-subreg_label-6_msk.nii.gz")
    ref = np.zeros(sub.shape, np.uint8)
    ref[sub == 49] = 1  # vertebral body
    ref[sub == 100] = 2  # disc
    pred = shift_down(ref, 1, axis=1)  # PIR: axis 1 runs superior -> inferior
    t = compute_level_metrics(ref, pred, spacing=spacing, mode="components", si_axis=1)
    assert set(t["detection"]) == {"detected"}
    # Each reference component against its own shifted copy, by direct counting.
    from scipy import ndimage

    for cls, value in (("vertebral_body", 1), ("intervertebral_disc", 2)):
        lab, n = ndimage.label(ref == value)
        rows = t[t["structure"] == cls]
        assert len(rows) == n
        expected = sorted(direct_dice(lab == i, shift_down(lab == i, 1, axis=1)) for i in range(1, n + 1))
        np.testing.assert_allclose(sorted(rows["dice"]), expected, rtol=1e-12)


def test_instance_levels_on_real_vertebra_labels():
    ref, spacing = _tptbox("sub-mri_seg-vert_label-6_msk.nii.gz")
    pred = ref.copy()
    pred[pred == 6] = 0  # C6 missed
    pred[ref == 7] = 0
    pred[shift_down(ref == 7, 2, axis=1)] = 7  # C7 displaced by 2 voxels
    pred[0:3, 0:3, 0:3] = 4  # spurious C4
    t = compute_level_metrics(ref, pred, spacing=spacing, si_axis=1, case_id="tpt")
    by_level = t.set_index("level")
    assert by_level.loc["C5", "detection"] == "detected" and by_level.loc["C5", "dice"] == 1.0
    assert by_level.loc["C6", "detection"] == "missed" and by_level.loc["C6", "dice"] == 0.0
    assert by_level.loc["C4", "detection"] == "false_positive"
    assert by_level.loc["C6-C7", "structure"] == "intervertebral_disc"
    np.testing.assert_allclose(by_level.loc["C7", "dice"], direct_dice(ref == 7, pred == 7), rtol=1e-12)
    assert by_level.loc["C7", "detection"] == "detected"
    assert "205" not in set(t["level"])  # endplates are not levels of the ontology


def test_instance_min_dice_turns_poor_overlap_into_missed():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 3
    pred = shift_down(ref, 3, axis=0)  # overlap 1/4 of the cube: dice 0.25
    t = compute_level_metrics(ref, pred, spacing=(1, 1, 1), min_dice=0.3)
    assert t["detection"].tolist() == ["missed"] and t["level"].tolist() == ["C3"]
    np.testing.assert_allclose(t["dice"], 0.25)
