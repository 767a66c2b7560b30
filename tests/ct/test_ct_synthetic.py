"""The synthetic CT generator: Hounsfield units, VerSe labels, variants, the planted hard source, the cohort layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from audit.protocol import load_protocol
from audit.synthetic.cases import case_rng
from audit.synthetic.ct import CT_HARD_SOURCE, CT_SOURCES, HU, draw_spine, generate_ct_case
from audit.synthetic.ct_cohort import generate_ct_cohort


def _source(name):
    return next(s for s in CT_SOURCES if s.name == name)


@pytest.mark.parametrize("source", CT_SOURCES, ids=[s.name for s in CT_SOURCES])
def test_ct_case_is_in_hounsfield_units_with_verse_labels(source):
    case = generate_ct_case(np.random.default_rng(3), source)
    assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
    assert set(np.unique(case.label)) - {0} <= {16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 28}
    codes = {16: "T9", 17: "T10", 18: "T11", 19: "T12", 20: "L1", 21: "L2", 22: "L3", 23: "L4", 24: "L5", 25: "L6", 28: "T13"}
    assert sorted(codes[c] for c in np.unique(case.label) if c) == sorted(case.truth["levels"])
    corner = case.image[:3, :3].astype(float)  # outside the body: air
    assert abs(np.median(corner) - HU["air"]) < 5 * source.noise_hu + 30
    bone = case.image[case.label > 0].astype(float)
    assert np.median(bone) > 150  # cortical 900 / cancellous 250 HU, blurred and noisy
    np.testing.assert_allclose(case.affine, np.diag([*source.spacing, 1.0]))


def test_hard_source_noise_is_planted_and_switchable():
    # Monte Carlo: 8 cases each; noise SD measured in the air corner (clipped at -1024 HU, so it is an underestimate)
    def air_sd(hard):
        return np.mean([generate_ct_case(case_rng(5, 0, i), _source(CT_HARD_SOURCE), hard=hard).image[:4, :4].astype(float).std() for i in range(8)])

    assert air_sd(True) > 3 * air_sd(False)


def test_variant_frequencies_match_the_drawing_rule():
    # T13 0.06, missing T12 0.06, L6 0.10; 4000 draws: binomial SE about 0.004 / 0.004 / 0.005
    rng = np.random.default_rng(11)
    draws = [draw_spine(rng, ("T9", "L5"))[1] for _ in range(4000)]
    rate = {v: np.mean([v in d for d in draws]) for v in ("T13", "missing_T12", "L6")}
    assert abs(rate["T13"] - 0.06) < 0.015 and abs(rate["missing_T12"] - 0.06) < 0.015 and abs(rate["L6"] - 0.10) < 0.02


def test_ct_cohort_layout_is_read_by_the_ctspine1k_adapter(tmp_path):
    from audit.sites import build_manifest, load_site_config

    cohort = generate_ct_cohort(tmp_path / "c", n_cases=8, seed=1)
    truth = json.loads(cohort.read_text())
    configs = [load_site_config(p) for p in sorted((tmp_path / "c" / "sites").glob("*.yaml"))]
    manifest, failures = build_manifest(configs)
    assert failures == [] and len(manifest) == 8 == len(truth["cases"])
    assert set(manifest["site"]) == {s.name for s in CT_SOURCES}
    hard = manifest[manifest["site"] == CT_HARD_SOURCE].iloc[0]
    assert (hard["slice_thickness_band"], hard["kernel_class"], hard["contrast"]) == ("2.5-5mm", "sharp", "Unknown")
    img = nib.load(hard["image_path"])
    assert img.header.get_zooms() == (2.0, 2.0, 5.0)
    again = generate_ct_cohort(tmp_path / "c", n_cases=8, seed=1)  # a previous cohort is replaced, byte-identical images
    assert json.loads(again.read_text()) == truth


def test_ct_demo_protocol_is_valid(repo_root):
    proto = load_protocol(repo_root / "protocols" / "demo_ct.yaml")
    assert proto.synthetic_cohort.modality == "ct" and proto.vertebrae.max_distance_mm == 20.0
    example = load_protocol(repo_root / "protocols" / "ctspine1k_totalsegmentator.yaml")
    assert example.model["labels"] == "totalseg_ct_v2"
