"""Input validation: errors that name the parameter and echo the value."""

from __future__ import annotations

import numpy as np
import pytest

from audit.metrics import METRICS, compute_case_metrics, compute_level_metrics, metric_spec

REF = np.zeros((4, 5, 6), np.uint8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prediction": np.zeros((4, 5, 7), np.uint8)}, "prediction: shape"),
        ({"spacing": (1.0, 1.0)}, "spacing: expected 3 values"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing: every value"),
        ({"prediction": np.zeros((4, 5, 6), np.float32)}, "prediction: expected an integer"),
        ({"metrics": ("dice", "hd99")}, "unknown name 'hd99'"),
        ({"structures": {}}, "structures"),
        ({"structures": {"s": (0,)}}, r"structures\['s'\]"),
        ({"slice_axis": 3}, "slice_axis"),
    ],
    ids=["shape", "spacing-length", "spacing-zero", "float-labels", "metric-name", "no-structures", "label-zero", "slice-axis"],
)
def test_case_metrics_errors_name_the_parameter(kwargs, match):
    args = {"prediction": REF, "spacing": (1.0, 1.0, 1.0), "structures": {"s": (1,)}, "metrics": ("dice",)} | kwargs
    with pytest.raises(ValueError, match=match):
        compute_case_metrics(REF, args.pop("prediction"), **args)


def test_metric_spec_names_and_nsd_parsing():
    assert metric_spec("nsd_2.0mm").name == "nsd_2mm"
    assert metric_spec("nsd_0.5mm").name == "nsd_0.5mm"
    assert metric_spec("hd95").higher_is_better is False and metric_spec("dice").bounded is True
    assert metric_spec("rel_volume_error").signed is True
    assert {"dice", "iou", "hd95", "hd", "assd", "rel_volume_error", "abs_volume_error_ml", "dice_slicewise_cspineseg"} <= set(METRICS)
    with pytest.raises(ValueError, match="allowed values"):
        metric_spec("nsd_2")


def test_negative_labels_are_rejected():
    ref = np.zeros((3, 3, 3), np.int16)
    ref[0, 0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        compute_case_metrics(ref, ref, spacing=(1, 1, 1), structures={"s": (1,)})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mode": "panoptic"}, "mode: allowed"), ({"mode": "components"}, "si_axis: required"), ({"superior": "up"}, "superior"),
     ({"mode": "components", "si_axis": 1, "connectivity": 4}, "connectivity")],
    ids=["mode", "si-axis-missing", "superior", "connectivity"],
)
def test_level_metrics_errors_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_level_metrics(REF, REF, spacing=(1, 1, 1), **kwargs)
