"""Invariances: axis/spacing permutation, cropping, dtype, multi-label structures."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_testlib import random_blob

from audit.metrics import EmptyPolicy, compute_case_metrics, metric_spec
from audit.metrics.case import structure_values

METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd_1mm", "nsd_3mm", "rel_volume_error", "abs_volume_error_ml")


def two_label_case(seed=0, shape=(36, 30, 12)):
    ref = random_blob(shape, seed).astype(np.uint8) + 2 * random_blob(shape, seed + 1, threshold=0.8).astype(np.uint8)
    pred = random_blob(shape, seed + 2).astype(np.uint8) + 2 * random_blob(shape, seed + 3, threshold=0.8).astype(np.uint8)
    return np.minimum(ref, 2), np.minimum(pred, 2)


def metric_values(ref, pred, spacing, **kw):
    t = compute_case_metrics(ref, pred, spacing=spacing, structures={"a": (1,), "b": (2,), "ab": (1, 2)}, metrics=METRICS, **kw)
    return t.set_index(["structure", "metric"])["value"].sort_index()


@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 2, 0), (0, 2, 1)], ids=["201", "120", "021"])
def test_permuting_axes_and_spacing_together_gives_same_numbers(perm):
    ref, pred = two_label_case()
    spacing = (0.5, 0.8, 4.0)
    base = metric_values(ref, pred, spacing)
    permuted = metric_values(np.transpose(ref, perm), np.transpose(pred, perm), tuple(spacing[p] for p in perm))
    np.testing.assert_allclose(permuted.to_numpy(), base.to_numpy(), rtol=1e-12, atol=1e-12)


def test_spacing_order_matters():
    ref, pred = two_label_case()
    a = metric_values(ref, pred, (0.5, 0.8, 4.0))
    b = metric_values(ref, pred, (4.0, 0.8, 0.5))
    assert not np.allclose(a.xs("hd95", level="metric"), b.xs("hd95", level="metric"))


def test_padding_the_volume_changes_nothing():
    ref, pred = two_label_case(seed=5)
    pad = ((7, 3), (0, 11), (4, 9))
    spacing = (0.5, 0.8, 4.0)
    policy = EmptyPolicy(missed_distance=100.0)
    base = metric_values(ref, pred, spacing, empty_policy=policy)
    padded = metric_values(np.pad(ref, pad), np.pad(pred, pad), spacing, empty_policy=policy)
    np.testing.assert_array_equal(padded.to_numpy(), base.to_numpy())


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["s0", "s1", "s2"])
def test_cropped_computation_equals_whole_volume_computation(seed):
    """compute_case_metrics crops to the structure's box; structure_values on the full arrays does not."""
    ref, pred = two_label_case(seed=seed)
    spacing = (0.6, 0.6, 3.0)
    specs = [metric_spec(m) for m in METRICS + ("dice_slicewise_cspineseg",)]
    t = compute_case_metrics(ref, pred, spacing=spacing, structures={"a": (1,)}, metrics=[s.name for s in specs])
    cropped = dict(zip(t["metric"], t["value"]))
    _, full, _, _ = structure_values(
        ref == 1, pred == 1, spacing=spacing, specs=specs, worst_distance=0.0, policy=EmptyPolicy(), slice_axis=2, n_slices_total=ref.shape[2]
    )
    for name, value in full.items():
        assert cropped[name] == value, name


def test_bool_and_integer_dtypes_agree():
    ref, pred = two_label_case()
    a = compute_case_metrics(ref == 1, pred == 1, spacing=(1, 1, 2), structures={"s": (1,)}, metrics=METRICS)
    for dtype in (np.int16, np.int64, np.uint16):
        b = compute_case_metrics(ref.astype(dtype), pred.astype(dtype), spacing=(1, 1, 2), structures={"s": (1,)}, metrics=METRICS)
        np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())


def test_multi_label_structure_equals_merged_mask():
    ref, pred = two_label_case()
    merged = compute_case_metrics((ref > 0).astype(np.uint8), (pred > 0).astype(np.uint8), spacing=(1, 1, 2), structures={"s": (1,)}, metrics=METRICS)
    multi = compute_case_metrics(ref, pred, spacing=(1, 1, 2), structures={"s": (1, 2)}, metrics=METRICS)
    np.testing.assert_array_equal(merged["value"].to_numpy(), multi["value"].to_numpy())
