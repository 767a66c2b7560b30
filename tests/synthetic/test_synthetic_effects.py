"""Planted effects are measurable in the images and labels; the null cohort carries none.

Oracles: SNR measured from the stored image (cord median over the Rayleigh noise sigma in air),
disc height measured from the label voxels, disc/CSF intensity ratio from image and labels;
slopes and group differences tested with scipy.stats (linregress, f_oneway).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synth_measure import cord_snr, disc_height_from_labels, disc_to_csf_ratio
from scipy import stats

from audit.synthetic import DEFAULT_SITES, HARD_SITE, Patient, PlantedEffects, SiteProfile, generate_case, null_sites

AGES = np.linspace(20, 90, 30)


def patients_aged(ages: np.ndarray, seed: int) -> list[Patient]:
    """One patient per age, each with its own anatomy seed."""
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(ages))
    return [Patient(f"P{i + 1:04d}", float(a), "F", "White", "Not Hispanic or Latino", int(s)) for i, (a, s) in enumerate(zip(ages, seeds))]


def site(name: str, sites: tuple[SiteProfile, ...] = DEFAULT_SITES) -> SiteProfile:
    return next(s for s in sites if s.name == name)


def snr_by_site(sites: tuple[SiteProfile, ...], planted: PlantedEffects, per_site: int = 6) -> dict[str, np.ndarray]:
    patients = patients_aged(np.full(per_site, 50.0), seed=5)
    out = {}
    for k, profile in enumerate(sites):
        out[profile.name] = np.array(
            [cord_snr(generate_case(np.random.default_rng(1000 * k + i), profile, p, planted), profile.intensity_offset)
             for i, p in enumerate(patients)]
        )
    return out


def test_hard_site_has_lowest_snr_and_1p5t_is_noisier_than_3t() -> None:
    snr = snr_by_site(DEFAULT_SITES, PlantedEffects())
    others = [n for n in snr if n != HARD_SITE]
    assert snr[HARD_SITE].max() < min(snr[n].min() for n in others)
    assert snr[HARD_SITE].mean() < 0.5 * np.mean([snr[n].mean() for n in others])
    three_t = [s.name for s in DEFAULT_SITES if s.field_strength_t >= 2.5]
    one_5 = [s.name for s in DEFAULT_SITES if s.field_strength_t < 2.5 and s.name != HARD_SITE]
    assert max(snr[n].max() for n in one_5) < min(snr[n].min() for n in three_t)
    # SNR ~ B0: a 1.494 T site has about half the SNR of a 3 T site (cord signal equal, tolerance 15 %).
    ratio = snr["site-C"].mean() / snr["site-A"].mean()
    assert ratio == pytest.approx(1.494 / 3.0, rel=0.15)


def test_null_sites_have_no_snr_difference() -> None:
    snr = snr_by_site(null_sites(), PlantedEffects.none())
    assert stats.f_oneway(*snr.values()).pvalue > 0.001
    means = [v.mean() for v in snr.values()]
    assert max(means) / min(means) < 1.1


def test_hard_site_contrast_is_reduced() -> None:
    """Disc-to-CSF contrast (1 - ratio) is lower at the hard site for the same patients."""
    patients = patients_aged(np.full(4, 40.0), seed=9)
    hard, normal = site(HARD_SITE), site("site-A")
    planted = PlantedEffects()
    r_hard = [disc_to_csf_ratio(generate_case(np.random.default_rng(i), hard, p, planted)) for i, p in enumerate(patients)]
    r_norm = [disc_to_csf_ratio(generate_case(np.random.default_rng(i), normal, p, planted)) for i, p in enumerate(patients)]
    assert np.mean(r_hard) > np.mean(r_norm) + 0.1


def measure_vs_age(planted: PlantedEffects, profile: SiteProfile) -> tuple:
    cases = [generate_case(np.random.default_rng(i), profile, p, planted) for i, p in enumerate(patients_aged(AGES, seed=21))]
    heights = [disc_height_from_labels(c) for c in cases]
    ratios = [disc_to_csf_ratio(c) for c in cases]
    return stats.linregress(AGES, heights), stats.linregress(AGES, ratios)


def test_age_effect_thins_and_darkens_discs() -> None:
    height, ratio = measure_vs_age(PlantedEffects(), site("site-A"))
    assert height.slope < 0 and height.pvalue < 1e-3
    # planted: -0.03 mm/year after 30 (level-weighted mean 1); flat before 30 so the all-ages slope is a bit smaller
    assert -0.045 < height.slope < -0.012
    assert ratio.slope < 0 and ratio.pvalue < 1e-3


def test_null_cohort_has_no_age_slope() -> None:
    profile = site("site-A", null_sites())
    height, ratio = measure_vs_age(PlantedEffects.none(), profile)
    assert abs(height.slope) < 3.3 * height.stderr  # 99.9 % CI contains 0
    assert abs(ratio.slope) < 3.3 * ratio.stderr
    assert abs(height.slope) < 0.01


def test_null_sites_equalise_quality_but_keep_site_identity() -> None:
    null = null_sites()
    quality = {(s.noise_sigma, s.bias_strength, s.contrast, s.tissue_multipliers, s.shape_ras, s.slice_thickness_mm) for s in null}
    assert len(quality) == 1
    assert len({s.vendor_raw for s in null}) == len(null) and len({s.axcodes for s in null}) == len(null)
    assert {s.field_strength_t for s in null} == {s.field_strength_t for s in DEFAULT_SITES}


def test_planted_hard_site_degrades_only_that_site() -> None:
    planted = PlantedEffects()
    for profile in DEFAULT_SITES:
        acquired = planted.site_profile(profile)
        if profile.name == HARD_SITE:
            assert acquired.noise_sigma == pytest.approx(profile.noise_sigma * planted.hard_noise_factor)
            assert acquired.contrast < profile.contrast and acquired.bias_strength > profile.bias_strength
        else:
            assert acquired == profile
    assert PlantedEffects.none().site_profile(site(HARD_SITE)) == site(HARD_SITE)
    with pytest.raises(ValueError, match="axcodes"):
        dataclasses.replace(site("site-A"), axcodes="PIA")


def test_site_profiles_round_trip_through_cohort_json() -> None:
    import json

    from audit.synthetic import profile_from_dict

    for profile in (*DEFAULT_SITES, *null_sites()):
        assert profile_from_dict(json.loads(json.dumps(profile.as_dict()))) == profile
