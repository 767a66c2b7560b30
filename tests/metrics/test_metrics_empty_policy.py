"""Missed, false-positive and both-empty structures: values, statuses, and no silent NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.metrics import EmptyPolicy, compute_case_metrics
from audit.records import METRIC_COLUMNS, validate_metric_table

METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd_2mm", "rel_volume_error", "abs_volume_error_ml", "dice_slicewise_cspineseg")
SHAPE, SPACING = (10, 12, 8), (0.5, 0.5, 4.0)
DIAGONAL = math.sqrt((10 * 0.5) ** 2 + (12 * 0.5) ** 2 + (8 * 4.0) ** 2)


def case_with_structures():
    """Label 1 in both, 2 only in the reference (missed), 3 only in the prediction (false positive), 4 in neither."""
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    ref[1:4, 1:4, 1:3] = 1
    pred[1:4, 1:5, 1:3] = 1
    ref[6:9, 6:9, 4:6] = 2  # 18 voxels
    pred[6:8, 1:3, 5:7] = 3  # 8 voxels
    return ref, pred


def table(policy=EmptyPolicy()):
    ref, pred = case_with_structures()
    structures = {"both": (1,), "missed": (2,), "spurious": (3,), "absent": (4,)}
    return compute_case_metrics(ref, pred, spacing=SPACING, structures=structures, metrics=METRICS, empty_policy=policy, case_id="c1")


def values(t, structure):
    sub = t[t["structure"] == structure]
    return dict(zip(sub["metric"], sub["value"])), set(sub["status"])


def test_statuses_and_columns():
    t = table()
    assert list(t.columns) == list(METRIC_COLUMNS)
    assert len(t) == 4 * len(METRICS)
    assert {s: values(t, s)[1] for s in ("both", "missed", "spurious", "absent")} == {
        "both": {"ok"}, "missed": {"missed"}, "spurious": {"false_positive"}, "absent": {"both_empty"}
    }
    validate_metric_table(t)  # the contract: NaN only under failed / both_empty


def test_missed_structure_scores_worst_values():
    v, _ = values(table(), "missed")
    assert v["dice"] == 0 and v["iou"] == 0 and v["nsd_2mm"] == 0
    for name in ("hd", "hd95", "assd"):
        np.testing.assert_allclose(v[name], DIAGONAL, rtol=1e-12)
    assert v["rel_volume_error"] == -1.0
    np.testing.assert_allclose(v["abs_volume_error_ml"], 18 * 1.0 / 1000)
    # CSpineSeg slice Dice as they compute it: 2 slices with reference voxels score 0, 6 empty slices score 1
    np.testing.assert_allclose(v["dice_slicewise_cspineseg"], 6 / 8)


def test_false_positive_structure_scores_worst_values():
    v, _ = values(table(), "spurious")
    assert v["dice"] == 0 and v["iou"] == 0 and v["nsd_2mm"] == 0
    np.testing.assert_allclose([v["hd"], v["hd95"], v["assd"]], DIAGONAL, rtol=1e-12)
    assert v["rel_volume_error"] == math.inf
    np.testing.assert_allclose(v["abs_volume_error_ml"], 8 / 1000)


def test_both_empty_is_nan_and_flagged_never_ok():
    t = table()
    sub = t[t["structure"] == "absent"]
    assert sub["value"].isna().all() and (sub["reference_volume_ml"] == 0).all()
    assert not t.loc[t["status"] != "both_empty", "value"].isna().any()


def test_configurable_missed_distance():
    v, _ = values(table(EmptyPolicy(missed_distance=50.0, false_positive_rel_volume_error=10.0)), "spurious")
    assert v["hd95"] == 50.0 and v["assd"] == 50.0 and v["rel_volume_error"] == 10.0


def test_mean_over_ok_and_missed_never_drops_a_missed_case():
    t = table()
    dice = t[(t["metric"] == "dice") & (t["status"] != "both_empty")]
    assert len(dice) == 3 and np.isfinite(dice["value"]).all()


@pytest.mark.parametrize("bad", ["max", -1.0, float("nan"), True], ids=["string", "negative", "nan", "bool"])
def test_policy_rejects_bad_missed_distance(bad):
    with pytest.raises(ValueError, match="missed_distance"):
        EmptyPolicy(missed_distance=bad)


def test_empty_arrays_give_both_empty():
    z = np.zeros((4, 4, 4), np.uint8)
    t = compute_case_metrics(z, z, spacing=(1, 1, 1), structures={"s": (1,)}, metrics=("dice", "hd95"))
    assert set(t["status"]) == {"both_empty"}
