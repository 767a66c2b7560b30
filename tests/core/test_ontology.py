"""Ontology and label maps, checked against the real label files in ../shared/data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from audit import ontology
from audit.label_maps import get_label_map, label_map_from_dict
from audit.ontology import COARSE_VALUES, LEVEL_VALUES, remap_labels


def _labels(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_level_codes_follow_verse_and_tptbox_conventions():
    assert LEVEL_VALUES["C1"] == 1 and LEVEL_VALUES["C7"] == 7 and LEVEL_VALUES["T1"] == 8
    assert LEVEL_VALUES["L5"] == 24 and LEVEL_VALUES["S1"] == 26
    assert LEVEL_VALUES["C5-C6"] == 105  # TPTBox: 100 + vertebra above
    assert ontology.DISCS[0] == "C2-C3" and ontology.DISCS[-1] == "L5-S1"
    assert "L5-L6" not in ontology.DISCS and len(ontology.DISCS) == 23  # C2-C3 .. L5-S1


def test_tptbox_subregion_maps_body_49_50_and_disc_100(shared_data):
    raw = _labels(shared_data / "tptbox-cervical-mri" / "sub-mri_seg-subreg_label-6_msk.nii.gz")
    result = remap_labels(raw, get_label_map("tptbox_subregion"))
    assert result.unknown_values == ()
    np.testing.assert_array_equal(result.array == COARSE_VALUES["vertebral_body"], np.isin(raw, [49, 50]))
    np.testing.assert_array_equal(result.array == COARSE_VALUES["intervertebral_disc"], raw == 100)
    np.testing.assert_array_equal(result.array == COARSE_VALUES["spinal_cord"], raw == 60)
    # posterior elements (41-48) and endplates (62) are known, ignored values -> background
    assert not result.array[np.isin(raw, [41, 48, 62])].any()


def test_cspineseg_style_map_from_tptbox_matches_sources_definition(shared_data):
    """SOURCES.md: a CSpineSeg-style map is 1 where subregion==49 and 2 where subregion==100."""
    raw = _labels(shared_data / "tptbox-cervical-mri" / "sub-mri_seg-subreg_label-6_msk.nii.gz")
    cspine = np.where(raw == 49, 1, np.where(raw == 100, 2, 0)).astype(np.uint8)
    result = remap_labels(cspine, get_label_map("cspineseg"))
    np.testing.assert_array_equal(result.array, remap_labels(raw, get_label_map("tptbox_subregion")).array * np.isin(raw, [49, 100]))


def test_tptbox_vertebra_instances_keep_levels(shared_data):
    raw = _labels(shared_data / "tptbox-cervical-mri" / "sub-mri_seg-vert_label-6_msk.nii.gz")
    result = remap_labels(raw, get_label_map("tptbox_vert"), granularity="level")
    assert result.unknown_values == ()
    assert set(np.unique(result.array)) == {0, LEVEL_VALUES["C5"], LEVEL_VALUES["C6"], LEVEL_VALUES["C7"], LEVEL_VALUES["C5-C6"], LEVEL_VALUES["C6-C7"]}
    coarse = remap_labels(raw, get_label_map("tptbox_vert"), granularity="coarse").array
    assert set(np.unique(coarse)) == {0, COARSE_VALUES["vertebra"], COARSE_VALUES["intervertebral_disc"]}
    np.testing.assert_array_equal(coarse == COARSE_VALUES["intervertebral_disc"], np.isin(raw, [105, 106]))


def test_totalseg_mr_maps_spine_and_ignores_organs(shared_data):
    raw = _labels(shared_data / "totalseg-mr" / "example_seg_mr.nii.gz")
    result = remap_labels(raw, get_label_map("totalseg_mr"))
    assert result.unknown_values == ()
    np.testing.assert_array_equal(result.array == COARSE_VALUES["vertebra"], raw == 19)
    np.testing.assert_array_equal(result.array == COARSE_VALUES["intervertebral_disc"], raw == 20)
    np.testing.assert_array_equal(result.array == COARSE_VALUES["spinal_cord"], raw == 21)
    assert set(np.unique(result.array)) <= {0, 2, 4, 5}


def test_sct_level_labelled_cord_float_file_is_all_cord(shared_data):
    raw = np.asanyarray(nib.load(str(shared_data / "sct-cervical" / "t2" / "t2_seg-manual_labeled.nii.gz")).dataobj)
    assert raw.dtype.kind == "f"  # the real file stores integers as float64
    result = remap_labels(raw, get_label_map("sct_levels"))
    np.testing.assert_array_equal(result.array == COARSE_VALUES["spinal_cord"], raw > 0)


def test_unknown_values_are_reported_not_silently_zeroed():
    arr = np.array([[0, 1, 2], [7, 7, 2]], dtype=np.uint8)
    result = remap_labels(arr, get_label_map("cspineseg"))
    assert result.unknown_values == (7,)
    assert result.unknown_voxels == 2


@pytest.mark.parametrize(
    ("array", "match"),
    [(np.array([0.5, 1.0]), "non-integer"), (np.array([-1, 1]), "negative"), (np.array(["a"]), "integer")],
    ids=["fractional", "negative", "strings"],
)
def test_bad_label_arrays_raise_clear_errors(array, match):
    with pytest.raises(ValueError, match=match):
        remap_labels(array, get_label_map("cspineseg"))


def test_unknown_structure_and_map_names_list_allowed_values():
    with pytest.raises(KeyError, match="allowed"):
        ontology.structure("vertebral_bodies")
    with pytest.raises(KeyError, match="known"):
        get_label_map("cspine")
    with pytest.raises(KeyError, match="allowed"):
        label_map_from_dict("custom", {1: "vertebral-body"})


def test_values_of_coarse_name_collects_levels():
    vert = get_label_map("tptbox_vert")
    # the 23 ontology discs plus TPTBox's L6-S1 (125) and T13-L1 (128), which have no level of their own
    assert vert.values_of("intervertebral_disc") == tuple(sorted([*(100 + LEVEL_VALUES[d.split("-")[0]] for d in ontology.DISCS), 125, 128]))
    assert get_label_map("cspineseg").values_of("vertebral_body") == (1,)
