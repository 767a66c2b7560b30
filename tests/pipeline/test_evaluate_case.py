"""Per-case evaluation: label maps onto the ontology, geometry checks, failures recorded not raised."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from audit.evaluate import EvaluationSettings, evaluate_case, metric_names, structure_values
from audit.label_maps import get_label_map
from audit.ontology import COARSE_VALUES, LEVEL_VALUES
from audit.records import CaseFailure, validate_metric_table

SPACING = (0.5, 0.5, 4.0)


def write_labels(path, array, spacing=SPACING):
    """Write a uint8 label volume with a diagonal affine of ``spacing``."""
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))
    return str(path)


def body_and_disc_volume(body_shift_vox: int = 0) -> np.ndarray:
    """CSpineSeg-style labels: a body block (1) above a disc block (2); the body moved by ``body_shift_vox`` rows."""
    vol = np.zeros((20, 20, 6), dtype=np.uint8)
    vol[2 + body_shift_vox : 10 + body_shift_vox, 4:16, 1:5] = 1
    vol[12:15, 4:16, 1:5] = 2
    return vol


def numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Independent oracle: 2|A∩B| / (|A|+|B|)."""
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_dice_matches_independent_numpy_and_cspineseg_map_reaches_model_values(tmp_path):
    ref = body_and_disc_volume()
    pred_cspine = body_and_disc_volume(body_shift_vox=1)
    # the "model" writes canonical spine_audit values while the site uses CSpineSeg values (same numbers here)
    out = evaluate_case(
        "S/1",
        label_path=write_labels(tmp_path / "ref.nii.gz", ref),
        prediction_path=write_labels(tmp_path / "pred.nii.gz", pred_cspine),
        reference_map=get_label_map("cspineseg"),
        prediction_map=get_label_map("spine_audit"),
        settings=EvaluationSettings(structures=("vertebral_body", "intervertebral_disc"), metrics=("dice", "hd95")),
    )
    validate_metric_table(out)
    got = out.set_index(["structure", "metric"])["value"]
    np.testing.assert_allclose(got["vertebral_body", "dice"], numpy_dice(ref == 1, pred_cspine == 1), rtol=0, atol=1e-12)
    assert got["intervertebral_disc", "dice"] == 1.0
    # a one-row shift of a block along the 0.5 mm axis: every surface point is at most 0.5 mm away
    np.testing.assert_allclose(got["vertebral_body", "hd95"], 0.5, atol=1e-6)


@pytest.mark.parametrize(
    ("pred_builder", "pred_spacing", "message"),
    [
        (lambda: np.zeros((20, 20, 5), np.uint8), SPACING, "shape"),
        (lambda: body_and_disc_volume(), (0.5, 0.5, 3.0), "affine"),
        (lambda: body_and_disc_volume() * 3, SPACING, r"prediction label values \[3, 6\]"),
    ],
    ids=["shape-mismatch", "affine-mismatch", "unknown-prediction-values"],
)
def test_bad_predictions_become_case_failures(tmp_path, pred_builder, pred_spacing, message):
    result = evaluate_case(
        "S/2",
        label_path=write_labels(tmp_path / "ref.nii.gz", body_and_disc_volume()),
        prediction_path=write_labels(tmp_path / "pred.nii.gz", pred_builder(), pred_spacing),
        reference_map=get_label_map("cspineseg"),
        prediction_map=get_label_map("cspineseg"),
        settings=EvaluationSettings(structures=("vertebral_body",), metrics=("dice",)),
        site="S",
    )
    assert isinstance(result, CaseFailure) and result.site == "S"
    assert re.search(message, result.error), result.error


def test_corrupt_reference_file_is_a_failure_not_an_exception(tmp_path):
    bad = tmp_path / "ref.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    result = evaluate_case(
        "S/3",
        label_path=str(bad),
        prediction_path=write_labels(tmp_path / "pred.nii.gz", body_and_disc_volume()),
        reference_map=get_label_map("cspineseg"),
        prediction_map=get_label_map("cspineseg"),
        settings=EvaluationSettings(structures=("vertebral_body",), metrics=("dice",)),
    )
    assert isinstance(result, CaseFailure) and "cannot be read" in result.error and result.stage == "harmonize"


def test_structure_values_at_both_granularities():
    assert structure_values(["vertebral_body", "spinal_cord"], "coarse") == {"vertebral_body": (1,), "spinal_cord": (4,)}
    levels = structure_values(["C5-C6", "intervertebral_disc"], "level")
    assert levels["C5-C6"] == (LEVEL_VALUES["C5-C6"],)
    assert COARSE_VALUES["intervertebral_disc"] in levels["intervertebral_disc"] and LEVEL_VALUES["L5-S1"] in levels["intervertebral_disc"]
    assert EvaluationSettings(structures=("C5", "spinal_cord"), metrics=("dice",)).granularity == "level"


def test_metric_names_expand_nsd_tolerances():
    assert metric_names(["dice", "hd95"], [1.0, 2.5]) == ("dice", "hd95", "nsd_1mm", "nsd_2.5mm")


def test_failed_cases_without_manifest_rows_get_unique_placeholder_rows():
    import pandas as pd

    from audit.stages import _failed_manifest_rows
    from audit.records import CaseFailure

    manifest = pd.DataFrame({"case_id": ["S/ok"]})
    dups = [CaseFailure(case_id="S/dup", stage="adapter", error="duplicate case id", site="S") for _ in range(3)]
    rows = _failed_manifest_rows(dups, manifest)
    assert rows["case_id"].tolist() == ["S/dup", "S/dup#2", "S/dup#3"]
    assert (rows["site"] == "S").all() and (rows["vendor"] == "Unknown").all()
