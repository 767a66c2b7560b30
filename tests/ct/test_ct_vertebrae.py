"""Per-vertebra evaluation (VerSe definitions) on hand-checkable block spines and the real TPTBox CT crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ct_builders import PITCH_MM, block_spine, one_vertebra_moved, relabelled, shifted_by, verse_get_hits_oracle

from audit.metrics.vertebrae import (
    anatomical_variants,
    evaluate_vertebrae,
    identification_hits,
    vertebra_centroids,
    verse_numbering,
)
from audit.label_maps import get_label_map

L1, L2, L3, L4, L5, L6, T11, T12, T13 = 20, 21, 22, 23, 24, 25, 18, 19, 28
SP = (1.0, 1.0, 1.0)


def _row(table, vertebra):
    rows = table[table["vertebra"] == vertebra]
    assert len(rows) == 1, table
    return rows.iloc[0]


def test_perfect_prediction_identifies_every_vertebra_at_zero_distance():
    ref = block_spine([L2, L3, L4])
    t = evaluate_vertebrae(ref, ref.copy(), spacing=SP, case_id="c")
    assert list(t["vertebra"]) == ["L2", "L3", "L4"]
    assert t["identified"].all() and (t["error"] == "none").all() and not t["shape_error"].any()
    np.testing.assert_allclose(t["localization_mm"], 0.0, atol=1e-12)
    np.testing.assert_allclose(t["dice"], 1.0)
    np.testing.assert_allclose(t["hd95"], 0.0)
    np.testing.assert_allclose(t["reference_volume_ml"], 1.0)  # 1000 voxels of 1 mm^3


@pytest.mark.parametrize(
    ("shift_mm", "identified", "error"),
    [(19, True, "none"), (20, True, "none"), (21, False, "mislocalized")],
    ids=["19mm-hit", "20mm-hit-inclusive", "21mm-miss"],
)
def test_identification_radius_is_20mm_inclusive(shift_mm, identified, error):
    # pitch 60 mm: the moved L3 stays closest to its own reference centroid; only the radius decides
    ref = block_spine([L2, L3, L4], pitch=60)
    pred = one_vertebra_moved(ref, L3, shift_mm)
    row = _row(evaluate_vertebrae(ref, pred, spacing=SP), "L3")
    assert row["identified"] is identified or bool(row["identified"]) == identified
    assert row["error"] == error
    assert math.isclose(row["localization_mm"], shift_mm, abs_tol=1e-9)


def test_anisotropic_spacing_scales_the_distance():
    ref = block_spine([L2, L3, L4], pitch=60)
    pred = one_vertebra_moved(ref, L3, 7)  # 7 voxels of 3 mm = 21 mm along axis 2
    row = _row(evaluate_vertebrae(ref, pred, spacing=(1.0, 1.0, 3.0)), "L3")
    assert math.isclose(row["localization_mm"], 21.0, abs_tol=1e-9) and not row["identified"]


def test_closest_reference_rule_rejects_a_prediction_nearer_another_vertebra():
    # pitch 30: L2 moved 16 mm down is 16 mm from its own centroid but 14 mm from L3's -> not identified (VerSe)
    ref = block_spine([L2, L3, L4], pitch=30)
    pred = one_vertebra_moved(ref, L2, 16)
    t = evaluate_vertebrae(ref, pred, spacing=SP)
    assert not _row(t, "L2")["identified"] and _row(t, "L2")["error"] == "mislocalized"
    assert _row(t, "L3")["identified"] and _row(t, "L4")["identified"]
    gt, pr = vertebra_centroids(ref, SP), vertebra_centroids(pred, SP)
    assert identification_hits(gt, pr) == verse_get_hits_oracle(gt, pr)


def test_labels_shifted_by_one_level_are_off_by_one_not_shape_errors():
    ref = block_spine([L2, L3, L4])
    pred = relabelled(ref, {L2: L3, L3: L4, L4: L5})
    t = evaluate_vertebrae(ref, pred, spacing=SP)
    refs = t[t["in_reference"]]
    assert list(refs["error"]) == ["off_by_one"] * 3 and not refs["identified"].any()
    np.testing.assert_allclose(refs["matched_dice"], 1.0)  # perfectly delineated ...
    assert not refs["shape_error"].any()  # ... so no shape error
    assert _row(t, "L2")["dice"] == 0.0 and _row(t, "L2")["status"] == "missed"  # nothing labelled L2
    # L3 (label 22) is predicted on the L2 block: same-label Dice 0, localization one pitch
    assert _row(t, "L3")["dice"] == 0.0 and math.isclose(_row(t, "L3")["localization_mm"], PITCH_MM)
    assert _row(t, "L5")["error"] == "false_positive" and not _row(t, "L5")["in_reference"]


def test_labels_shifted_by_two_levels_are_mislabelled():
    ref = block_spine([L2, L3])
    t = evaluate_vertebrae(ref, relabelled(ref, {L2: L4, L3: L5}), spacing=SP)
    assert list(t[t["in_reference"]]["error"]) == ["mislabelled", "mislabelled"]


def test_half_delineated_vertebra_is_identified_with_a_shape_error():
    ref = block_spine([L2, L3, L4])
    pred = ref.copy()
    pred[5:10][pred[5:10] == L3] = 0  # half of L3 along axis 0: 500 of 1000 voxels, centroid moves 2.5 mm
    row = _row(evaluate_vertebrae(ref, pred, spacing=SP), "L3")
    assert row["identified"] and row["error"] == "none"
    assert math.isclose(row["localization_mm"], 2.5) and math.isclose(row["dice"], 2 * 500 / 1500)
    assert row["shape_error"]  # 0.667 < 0.7


def test_missing_vertebra_is_missed():
    ref = block_spine([L2, L3, L4])
    row = _row(evaluate_vertebrae(ref, relabelled(ref, {L3: 0}), spacing=SP), "L3")
    assert row["error"] == "missed" and row["status"] == "missed" and row["dice"] == 0.0
    assert math.isnan(row["localization_mm"]) and pd_na(row["matched_label"])


def pd_na(value) -> bool:
    import pandas as pd

    return value is pd.NA


@pytest.mark.parametrize(
    ("ref_codes", "pred_map", "vertebra", "variants"),
    [
        ([T12, T13, L1], {T13: L1, L1: L2}, "T13", "T13"),  # T13 called L1: one step in C1..T12,T13,L1..L6
        ([T11, L1, L2], {L1: T12, L2: L1}, "L1", "missing_T12"),  # 11 thoracic: L1 called T12
        ([L4, L5, L6], {L6: L5, L5: L4, L4: L3}, "L6", "L6"),  # lumbarised S1 labelled as L5
    ],
    ids=["T13-as-L1", "missing-T12-L1-as-T12", "L6-as-L5"],
)
def test_anatomical_variants_are_explicit_and_neighbours_count_as_off_by_one(ref_codes, pred_map, vertebra, variants):
    ref = block_spine(ref_codes)
    t = evaluate_vertebrae(ref, relabelled(ref, pred_map), spacing=SP)
    row = _row(t, vertebra)
    assert row["error"] == "off_by_one" and row["variants"] == variants
    assert (t["variants"] == variants).all()


def test_anatomical_variants_helper():
    assert anatomical_variants({T11, T12, L1}) == ()
    assert anatomical_variants({L5, L6}) == ("L6",)


def test_given_reference_centroids_are_used():
    ref = block_spine([L2, L3])
    ctd = vertebra_centroids(ref, SP)
    moved = {L2: ctd[L2] + [0, 0, 21.0], L3: ctd[L3]}
    t = evaluate_vertebrae(ref, ref.copy(), spacing=SP, reference_centroids=moved)
    assert math.isclose(_row(t, "L2")["localization_mm"], 21.0) and not _row(t, "L2")["identified"]
    with pytest.raises(ValueError, match="no centroid for reference vertebrae"):
        evaluate_vertebrae(ref, ref, spacing=SP, reference_centroids={L2: ctd[L2]})


def test_rejects_values_that_are_not_verse_vertebrae():
    ref = block_spine([L2])
    with pytest.raises(ValueError, match=r"values \[26\] are not VerSe vertebra labels"):
        evaluate_vertebrae(ref, relabelled(ref, {L2: 26}), spacing=SP)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("totalseg_ct_v2", [0, 27, 31, 32, 50, 25, 26, 5], [0, L5, L1, T12, 1, 0, 0, 0]),
        ("totalseg_ct_v1", [0, 18, 22, 23, 41, 92, 5], [0, L5, L1, T12, 1, 0, 0]),
        ("verse", [0, 19, 28, 20, 25, 26, 27], [0, T12, T13, L1, L6, 0, 0]),
        ("ctspine1k", [0, 1, 19, 25], [0, 1, T12, L6]),
    ],
    ids=["totalseg-ct-v2", "totalseg-ct-v1", "verse-T13", "ctspine1k"],
)
def test_verse_numbering_of_known_conventions(name, raw, expected):
    # expected values from the sources cited in audit/ontology.py (TotalSegmentator map_to_binary.py, VerSe v_dict)
    assert verse_numbering(np.array(raw), get_label_map(name)).tolist() == expected


def test_verse_numbering_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"values \[200\] are not in label map 'ctspine1k'"):
        verse_numbering(np.array([0, 200]), get_label_map("ctspine1k"))


# ---- real CT: TPTBox lumbar crop (L2-L4 = 21/22/23, vertebral body = subregions 49 + 50) -------------------------


@pytest.fixture(scope="module")
def tptbox_ct(shared_data):
    import nibabel as nib

    folder = shared_data / "tptbox-lumbar-ct"
    vert = nib.load(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    sub = np.asarray(nib.load(folder / "sub-ct_seg-subreg_label-22_msk.nii.gz").dataobj)
    spacing = tuple(float(z) for z in vert.header.get_zooms())
    return np.asarray(vert.dataobj), sub, spacing


@pytest.mark.realdata
def test_real_crop_against_itself(tptbox_ct):
    vert, _, spacing = tptbox_ct
    ref = verse_numbering(vert, get_label_map("verse"))
    t = evaluate_vertebrae(ref, ref.copy(), spacing=spacing, case_id="tptbox")
    assert list(t["vertebra"]) == ["L2", "L3", "L4"] and t["identified"].all()
    np.testing.assert_allclose(t["dice"], 1.0)


@pytest.mark.realdata
def test_real_crop_relabelled_one_level_down_is_off_by_one(tptbox_ct):
    vert, _, spacing = tptbox_ct
    ref = verse_numbering(vert, get_label_map("verse"))
    gt = vertebra_centroids(ref, spacing)
    gaps = [np.linalg.norm(gt[a] - gt[b]) for a, b in ((L2, L3), (L3, L4))]
    assert min(gaps) > 20.0, gaps  # precondition of the hand-check: neighbours are more than 20 mm apart (26.5, 29.4)
    t = evaluate_vertebrae(ref, relabelled(ref, {L2: L3, L3: L4, L4: L5}), spacing=spacing)
    refs = t[t["in_reference"]]
    assert list(refs["error"]) == ["off_by_one"] * 3 and not refs["identified"].any()
    np.testing.assert_allclose(refs["matched_dice"], 1.0)


@pytest.mark.realdata
def test_real_crop_body_only_prediction_is_identified_with_shape_errors(tptbox_ct):
    """A model segmenting vertebral bodies (49 + 50) scored against whole vertebrae: labels right, shapes wrong."""
    vert, sub, spacing = tptbox_ct
    ref = verse_numbering(vert, get_label_map("verse"))
    body = np.where(np.isin(sub, (49, 50)), ref, 0).astype(ref.dtype)
    t = evaluate_vertebrae(ref, body, spacing=spacing)
    gt, pr = vertebra_centroids(ref, spacing), vertebra_centroids(body, spacing)
    assert dict(zip(t["label"], t["identified"])) == verse_get_hits_oracle(gt, pr)
    for code in (L2, L3, L4):
        n_body, n_vert = int((body == code).sum()), int((ref == code).sum())
        row = t[t["label"] == code].iloc[0]
        np.testing.assert_allclose(row["dice"], 2 * n_body / (n_body + n_vert), rtol=1e-12)
        assert row["shape_error"] == (row["matched_dice"] < 0.7)
        np.testing.assert_allclose(row["localization_mm"], np.linalg.norm(gt[code] - pr[code]), rtol=1e-12)


def test_with_a_t13_the_t12_called_l1_is_two_levels_off():
    ref = block_spine([T12, T13, L1])
    t = evaluate_vertebrae(ref, relabelled(ref, {T12: L1, T13: L2, L1: L3}), spacing=SP)
    assert _row(t, "T12")["error"] == "mislabelled"  # T12 -> T13 -> L1 in this 13-thoracic spine


@pytest.mark.realdata
@pytest.mark.parametrize(("version", "offset"), [("totalseg_ct_v2", {21: 30, 22: 29, 23: 28}), ("totalseg_ct_v1", {21: 21, 22: 20, 23: 19})], ids=["v2", "v1"])
def test_totalsegmentator_output_scored_against_the_real_crop(shared_data, tmp_path, version, offset):
    """A TotalSegmentator multilabel output (L2/L3/L4 in its own numbering, plus an organ) read as predictions."""
    import nibabel as nib

    from audit.metrics import EmptyPolicy
    from audit.vertebra_eval import evaluate_vertebrae_case

    ref_path = shared_data / "tptbox-lumbar-ct" / "sub-ct_seg-vert_label-22_msk.nii.gz"
    ref = nib.load(ref_path)
    arr = np.asarray(ref.dataobj)
    pred = relabelled(arr, offset)
    pred[0, 0, 0] = 5  # liver in both versions: ignored, not an error
    nib.save(nib.Nifti1Image(pred, ref.affine), tmp_path / "pred.nii.gz")
    t = evaluate_vertebrae_case("c", label_path=str(ref_path), prediction_path=str(tmp_path / "pred.nii.gz"), reference_map=get_label_map("verse"),
                                prediction_map=get_label_map(version), max_distance_mm=20.0, shape_dice_threshold=0.7, empty_policy=EmptyPolicy())
    assert list(t["vertebra"]) == ["L2", "L3", "L4"] and t["identified"].all()
    np.testing.assert_allclose(t["dice"], 1.0)


@pytest.mark.realdata
def test_cropped_evaluation_equals_full(shared_data, tmp_path):
    """The CT fast path (crop to the foreground box) gives the same rows as evaluate_case + evaluate_vertebrae_case."""
    import nibabel as nib
    import pandas as pd

    from audit.evaluate import EvaluationSettings, evaluate_case
    from audit.metrics import EmptyPolicy
    from audit.protocol import VertebraSettings
    from audit.vertebra_eval import evaluate_case_and_vertebrae, evaluate_vertebrae_case

    img = nib.load(shared_data / "tptbox-lumbar-ct" / "sub-ct_seg-vert_label-22_msk.nii.gz")
    ref = np.pad(np.asarray(img.dataobj), ((40, 10), (5, 30), (20, 25)))  # room around the spine: the crop happens
    pred = shifted_by(relabelled(ref, {L4: L5}), 3, axis=1)
    pred[pred == L3] = 0  # one missed vertebra: worst-case distance = the full image's diagonal
    for name, arr in (("ref", ref), ("pred", pred)):
        nib.save(nib.Nifti1Image(arr, img.affine), tmp_path / f"{name}.nii.gz")
    kw = dict(label_path=str(tmp_path / "ref.nii.gz"), prediction_path=str(tmp_path / "pred.nii.gz"), reference_map=get_label_map("verse"),
              prediction_map=get_label_map("verse"))
    settings = EvaluationSettings(("vertebra", "L2", "L3"), ("dice", "hd95", "assd", "nsd_2mm"), EmptyPolicy())
    metrics, rows = evaluate_case_and_vertebrae("c", settings=settings, vertebrae=VertebraSettings(), **kw)
    pd.testing.assert_frame_equal(metrics, evaluate_case("c", settings=settings, **kw))
    full = evaluate_vertebrae_case("c", max_distance_mm=20.0, shape_dice_threshold=0.7, empty_policy=EmptyPolicy(), **kw)
    pd.testing.assert_frame_equal(rows, full)
    assert (metrics["status"] == "missed").any() and (rows["error"] == "missed").any()
