"""Label remapping wrappers: unknown values reported, never silently zeroed."""

from __future__ import annotations

import numpy as np
import pytest

from audit.harmonize.labels import (
    UnknownLabelValuesError,
    label_value_counts,
    remap_case_labels,
    remap_to_ontology,
    resolve_label_map,
)
from audit.records import CaseFailure


def tptbox_subregion_row() -> np.ndarray:
    """One row of TPTBox subregion values: 49 body, 100 disc, 41 posterior element (ignored), 60 cord."""
    return np.array([0, 49, 49, 100, 41, 60, 0], dtype=np.uint8)


def test_remap_to_ontology_maps_known_values_by_hand():
    array, unknown = remap_to_ontology(tptbox_subregion_row(), "tptbox_subregion")
    np.testing.assert_array_equal(array, [0, 1, 1, 2, 0, 4, 0])
    assert unknown == ()


def test_remap_to_ontology_reports_unknown_values():
    labels = np.array([0, 1, 2, 7, 7, 9], dtype=np.int16)
    array, unknown = remap_to_ontology(labels, "cspineseg")
    np.testing.assert_array_equal(array, [0, 1, 2, 0, 0, 0])
    assert unknown == (7, 9)
    with pytest.raises(UnknownLabelValuesError, match=r"\[7, 9\] \(3 voxels\).*'cspineseg'"):
        remap_to_ontology(labels, "cspineseg", strict=True)


def test_resolve_inline_label_map_with_ignore():
    lmap = resolve_label_map({"values": {"1": "vertebral_body", 3: "spinal_cord"}, "ignore": [8]}, name="site-B:custom")
    array, unknown = remap_to_ontology(np.array([1, 3, 8, 5]), lmap)
    np.testing.assert_array_equal(array, [1, 4, 0, 0])
    assert unknown == (5,) and lmap.name == "site-B:custom"


@pytest.mark.parametrize("spec", ["no_such_map", {1: "no_such_structure"}, 42], ids=["name", "structure", "type"])
def test_resolve_label_map_rejects_bad_specs(spec):
    with pytest.raises((KeyError, ValueError)):
        resolve_label_map(spec)


def test_remap_case_labels_returns_case_failure_for_unknown_values():
    out = remap_case_labels("A/c1", np.array([0, 1, 5]), "cspineseg", site="A")
    assert isinstance(out, CaseFailure)
    assert (out.case_id, out.stage, out.error_type, out.site) == ("A/c1", "harmonize", "UnknownLabelValuesError", "A")
    ok = remap_case_labels("A/c2", np.array([0, 2, 1]), "cspineseg", site="A")
    np.testing.assert_array_equal(ok, [0, 2, 1])


def test_label_value_counts_by_hand():
    assert label_value_counts(np.array([[0, 0, 2], [2, 2, 1.0]])) == {0: 2, 1: 1, 2: 3}
