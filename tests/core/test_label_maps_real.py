"""Every built-in label map against its source's documentation and, where one exists, a real file.

The oracle for each real file is ``DOCUMENTED``: the raw values that make each structure, written here from the
source's documentation (../shared/data/SOURCES.md, TPTBox ``vert_constants.py``, TotalSegmentator
``map_to_binary.py``), never read from :mod:`audit.ontology`. For each map:

* the remapped structure's voxel count equals the count of its documented raw values in the file;
* a perfect prediction (the reference remapped to canonical values and written as the model's output) scores
  Dice 1 with status ``ok`` for every structure through :func:`audit.evaluate.evaluate_case`.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from audit.evaluate import EvaluationSettings, evaluate_case
from audit.label_maps import LABEL_MAPS, get_label_map
from audit.ontology import COARSE_VALUES, LEVEL_VALUES, VERTEBRAE, remap_labels

TPT_CERVICAL = "tptbox-cervical-mri"
TPT_LUMBAR = "tptbox-lumbar-ct"

#: (label map, file under ../shared/data, structure -> documented raw values, granularity).
DOCUMENTED = {
    "tptbox_subregion/lumbar-ct": (
        "tptbox_subregion",
        f"{TPT_LUMBAR}/sub-ct_seg-subreg_label-22_msk.nii.gz",
        {"vertebral_body": (49, 50)},  # SOURCES.md: 49 body border + 50 body interior
        "coarse",
    ),
    "tptbox_subregion/cervical-mri": (
        "tptbox_subregion",
        f"{TPT_CERVICAL}/sub-mri_seg-subreg_label-6_msk.nii.gz",
        {"vertebral_body": (49, 50), "intervertebral_disc": (100,), "spinal_cord": (60,), "spinal_canal": (61,)},
        "coarse",
    ),
    "tptbox_vert/cervical-mri": (
        "tptbox_vert",
        f"{TPT_CERVICAL}/sub-mri_seg-vert_label-6_msk.nii.gz",
        {"vertebra": (5, 6, 7), "intervertebral_disc": (105, 106)},  # 205-207 endplates are not structures
        "coarse",
    ),
    "tptbox_vert/cervical-mri-levels": (
        "tptbox_vert",
        f"{TPT_CERVICAL}/sub-mri_seg-vert_label-6_msk.nii.gz",
        {"C5": (5,), "C6": (6,), "C7": (7,), "C5-C6": (105,), "C6-C7": (106,)},
        "level",
    ),
    "tptbox_vert/lumbar-ct-levels": (
        "tptbox_vert",
        f"{TPT_LUMBAR}/sub-ct_seg-vert_label-22_msk.nii.gz",
        {"L2": (21,), "L3": (22,), "L4": (23,)},  # SOURCES.md: 21/22/23 = L2/L3/L4 (VerSe numbering)
        "level",
    ),
    "verse/lumbar-ct": (
        "verse",
        f"{TPT_LUMBAR}/sub-ct_seg-vert_label-22_msk.nii.gz",
        {"L2": (21,), "L3": (22,), "L4": (23,)},
        "level",
    ),
    "totalseg_mr/example": (
        "totalseg_mr",
        "totalseg-mr/example_seg_mr.nii.gz",
        {"vertebra": (19,), "intervertebral_disc": (20,), "spinal_cord": (21,)},  # map_to_binary.py class_map["total_mr"]
        "coarse",
    ),
    "sct_levels/t2": ("sct_levels", "sct-cervical/t2/t2_seg-manual_labeled.nii.gz", {"spinal_cord": (2, 3, 4, 5)}, "coarse"),
    "sct_cord/t2": ("sct_cord", "sct-cervical/t2/t2_seg-manual.nii.gz", {"spinal_cord": (1,)}, "coarse"),
    "sct_cord/t1": ("sct_cord", "sct-cervical/t1/t1w_seg-manual.nii.gz", {"spinal_cord": (1,)}, "coarse"),
}


def cspineseg_style_from_tptbox(subregion: np.ndarray) -> np.ndarray:
    """SOURCES.md: a CSpineSeg-style label map is 1 where subregion is 49 or 50 and 2 where subregion == 100."""
    return np.where(np.isin(subregion, (49, 50)), 1, np.where(subregion == 100, 2, 0)).astype(np.uint8)


def _load(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _save(array: np.ndarray, affine: np.ndarray, path) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _level_value(name: str) -> int:
    return LEVEL_VALUES[name]


@pytest.mark.parametrize("key", sorted(DOCUMENTED), ids=sorted(DOCUMENTED))
def test_remapped_voxel_counts_equal_documented_raw_value_counts(shared_data, key):
    map_name, rel, structures, granularity = DOCUMENTED[key]
    raw, _ = _load(shared_data / rel)
    result = remap_labels(raw, get_label_map(map_name), granularity=granularity)
    assert result.unknown_values == ()
    for name, values in structures.items():
        canonical = COARSE_VALUES[name] if granularity == "coarse" else _level_value(name)
        expected = int(np.isin(raw, values).sum())
        assert expected > 0, f"{rel} holds none of {values}: the oracle would be vacuous"
        assert int((result.array == canonical).sum()) == expected, name


@pytest.mark.parametrize("key", sorted(DOCUMENTED), ids=sorted(DOCUMENTED))
def test_perfect_prediction_scores_dice_one_for_every_structure(shared_data, tmp_path, key):
    map_name, rel, structures, granularity = DOCUMENTED[key]
    raw, affine = _load(shared_data / rel)
    canonical = remap_labels(raw, get_label_map(map_name), granularity=granularity).array
    prediction_map = get_label_map("spine_audit" if granularity == "coarse" else "spine_audit_levels")
    out = evaluate_case(
        key,
        label_path=str(shared_data / rel),
        prediction_path=_save(canonical, affine, tmp_path / "pred.nii.gz"),
        reference_map=get_label_map(map_name),
        prediction_map=prediction_map,
        settings=EvaluationSettings(structures=tuple(structures), metrics=("dice",)),
    )
    assert not hasattr(out, "error_type"), getattr(out, "error", "")
    assert set(out["status"]) == {"ok"}
    np.testing.assert_allclose(out["value"].to_numpy(), 1.0, rtol=0, atol=1e-12)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    for rec in out.itertuples(index=False):
        expected_ml = int(np.isin(raw, structures[rec.structure]).sum()) * voxel_ml
        assert math.isclose(rec.reference_volume_ml, expected_ml, rel_tol=1e-6), rec.structure


def test_tptbox_body_is_border_plus_interior_a_cspineseg_prediction_scores_one(shared_data, tmp_path):
    """The issue-11 case: a CSpineSeg-style copy of the real lumbar CT's bodies scored Dice 0.606 against
    ``tptbox_subregion`` (49 only); with 49 + 50 it is a perfect prediction."""
    rel = f"{TPT_LUMBAR}/sub-ct_seg-subreg_label-22_msk.nii.gz"
    raw, affine = _load(shared_data / rel)
    assert {49, 50} <= set(np.unique(raw).tolist())
    out = evaluate_case(
        "tptbox/ct",
        label_path=str(shared_data / rel),
        prediction_path=_save(cspineseg_style_from_tptbox(raw), affine, tmp_path / "cspine.nii.gz"),
        reference_map=get_label_map("tptbox_subregion"),
        prediction_map=get_label_map("cspineseg"),
        settings=EvaluationSettings(structures=("vertebral_body",), metrics=("dice",)),
    )
    assert out["value"].tolist() == [1.0]
    # the old map's value, reproduced by hand: Dice = 2 * n49 / (n49 + (n49 + n50))
    n49, n50 = int((raw == 49).sum()), int((raw == 50).sum())
    assert round(2 * n49 / (2 * n49 + n50), 3) == 0.606


def test_cspineseg_map_equals_tptbox_subregion_on_the_derived_real_file(shared_data):
    raw, _ = _load(shared_data / TPT_CERVICAL / "sub-mri_seg-subreg_label-6_msk.nii.gz")
    derived = remap_labels(cspineseg_style_from_tptbox(raw), get_label_map("cspineseg")).array
    tpt = remap_labels(raw, get_label_map("tptbox_subregion")).array
    keep = np.isin(tpt, [COARSE_VALUES["vertebral_body"], COARSE_VALUES["intervertebral_disc"]])
    np.testing.assert_array_equal(derived, np.where(keep, tpt, 0))


# TotalSegmentator class names transcribed from totalsegmentator/map_to_binary.py (wasserth/TotalSegmentator,
# commit 0275d30): class_map["total"] (v2 CT) and class_map["total_v1"]; "vertebrae_X" is vertebra X.
TOTALSEG_V2_SPINE = {25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 31: "vertebrae_L1", 32: "vertebrae_T12",
                     43: "vertebrae_T1", 44: "vertebrae_C7", 49: "vertebrae_C2", 50: "vertebrae_C1", 79: "spinal_cord"}  # fmt: skip
TOTALSEG_V1_SPINE = {18: "vertebrae_L5", 22: "vertebrae_L1", 23: "vertebrae_T12", 34: "vertebrae_T1", 35: "vertebrae_C7",
                     40: "vertebrae_C2", 41: "vertebrae_C1", 92: "sacrum"}  # fmt: skip
TOTALSEG_MR_SPINE = {18: "sacrum", 19: "vertebrae", 20: "intervertebral_discs", 21: "spinal_cord"}


def _ontology_name(totalseg_name: str) -> str | None:
    if totalseg_name.startswith("vertebrae_"):
        return totalseg_name.removeprefix("vertebrae_")
    return {"vertebrae": "vertebra", "intervertebral_discs": "intervertebral_disc", "spinal_cord": "spinal_cord"}.get(totalseg_name)


@pytest.mark.parametrize(
    ("map_name", "classes", "n_classes"),
    [("totalseg_ct_v2", TOTALSEG_V2_SPINE, 117), ("totalseg_ct_v1", TOTALSEG_V1_SPINE, 104), ("totalseg_mr", TOTALSEG_MR_SPINE, 50)],
    ids=["total-v2", "total-v1", "total_mr"],
)
def test_totalsegmentator_maps_follow_map_to_binary(map_name, classes, n_classes):
    lmap = get_label_map(map_name)
    for value, name in classes.items():
        expected = _ontology_name(name)
        if expected is None:  # the sacrum: a known, ignored value
            assert value in lmap.ignore and value not in lmap.values, (value, name)
        else:
            assert lmap.values[value] == expected, (value, name)
    assert set(lmap.values) | set(lmap.ignore) == set(range(1, n_classes + 1))  # every class is known, nothing more
    vertebrae = {v: s for v, s in lmap.values.items() if s in VERTEBRAE}
    # one vertebra per value, contiguous and ordered from caudal to cranial as in TotalSegmentator
    assert sorted(vertebrae, key=lambda v: VERTEBRAE.index(vertebrae[v]), reverse=True) == sorted(vertebrae)


def test_tptbox_vert_follows_vertebra_instance_numbering():
    """TPTBox Vertebra_Instance: C1 1, C7 7, T1 8, T12 19, L1 20, L6 25, S1 26, COCC 27, T13 28; IVD +100, endplate +200."""
    lmap = get_label_map("tptbox_vert")
    for value, name in {1: "C1", 7: "C7", 8: "T1", 19: "T12", 20: "L1", 25: "L6", 26: "S1", 28: "vertebra"}.items():
        assert lmap.values[value] == name
    assert lmap.values[105] == "C5-C6" and lmap.values[124] == "L5-S1" and lmap.values[128] == "intervertebral_disc"
    assert {27, 205, 228} <= lmap.ignore and 101 not in lmap.values  # no disc between C1 and C2


def test_every_builtin_map_cites_its_source():
    for name, lmap in LABEL_MAPS.items():
        assert lmap.source and lmap.description, name
