"""Intensity normalisation: hand-checkable z-scores, percentile clipping, Nyúl standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from audit.harmonize.intensity import (
    IntensitySpec,
    NyulStandard,
    apply_nyul,
    fit_nyul,
    foreground_mask,
    intensity_spec_from,
    normalize_intensity,
    percentile_clip,
    zscore,
)


def background_and_tissue(n_bg=600, tissue=(100.0, 200.0, 300.0), seed=0):
    """Zeros (air) plus a few tissue values: the foreground is exactly the tissue voxels."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.zeros(n_bg), rng.choice(tissue, size=400)])
    return values.reshape(10, 10, 10)


def test_foreground_zscore_by_hand():
    a = np.array([0, 0, 0, 0, 10, 20, 30, 40], dtype=float).reshape(2, 2, 2)
    # mean of all = 12.5 -> foreground {20, 30, 40}: mean 30, population std sqrt(200/3)
    mask = foreground_mask(a)
    assert mask.sum() == 3
    out = zscore(a, mask=mask)
    np.testing.assert_allclose(out.reshape(-1)[-3:], np.array([-10, 0, 10]) / np.sqrt(200 / 3), rtol=1e-6)
    np.testing.assert_allclose(normalize_intensity(a, IntensitySpec("foreground_zscore")), out)


def test_whole_image_zscore_matches_monai():
    from monai.transforms import NormalizeIntensity

    a = np.random.default_rng(1).gamma(2.0, 50.0, size=(6, 7, 5)).astype(np.float32)
    oracle = np.asarray(NormalizeIntensity()(a))
    np.testing.assert_allclose(normalize_intensity(a, IntensitySpec("zscore")), oracle, atol=1e-5)


def test_constant_image_gives_zeros_not_nan():
    out = normalize_intensity(np.full((3, 3, 3), 7.0), IntensitySpec("foreground_zscore"))
    np.testing.assert_array_equal(out, 0)


def test_percentile_clip_bounds():
    a = np.arange(101, dtype=float).reshape(1, 1, 101)
    out = percentile_clip(a, lower=10, upper=90)
    assert out.min() == 10 and out.max() == 90  # percentiles of 0..100 are the values themselves


def test_percentile_zscore_is_robust_to_a_hot_voxel():
    a = background_and_tissue()
    b = a.copy()
    b.flat[-1] = 1e6  # one artefact voxel
    ref = normalize_intensity(a, IntensitySpec("percentile_zscore", lower=1, upper=99))
    hot = normalize_intensity(b, IntensitySpec("percentile_zscore", lower=1, upper=99))
    plain = normalize_intensity(b, IntensitySpec("foreground_zscore"))
    # the artefact wrecks the plain z-score of tissue voxels but barely moves the clipped one
    tissue = a > 0
    assert np.abs(hot[tissue] - ref[tissue])[:-1].max() < 0.5
    assert np.abs(plain[tissue] - ref[tissue])[:-1].max() > 0.5


def test_nyul_aligns_a_rescaled_site_with_the_reference_site():
    rng = np.random.default_rng(2)
    reference = [rng.gamma(3.0, 100.0, size=(10, 10, 10)) for _ in range(3)]
    standard = fit_nyul(reference)
    # another site: the same anatomy scaled and offset (vendor gain), plus a monotone gamma
    image = reference[0]
    other = 3.5 * image**1.1 + 40.0
    a, b = apply_nyul(image, standard), apply_nyul(other, standard)
    # landmarks of both map onto the standard landmarks (up to percentile interpolation within the foreground)
    fg_a, fg_b = foreground_mask(image), foreground_mask(other)
    np.testing.assert_allclose(np.percentile(a[fg_a], standard.percentiles), standard.landmarks, atol=0.05)
    np.testing.assert_allclose(np.percentile(b[fg_b], standard.percentiles), standard.landmarks, atol=0.05)
    # and voxel values agree much better than before standardisation (relative to scale 0..100)
    assert np.median(np.abs(a - b)) < 1.5
    assert standard.landmarks[0] == pytest.approx(0.0) and standard.landmarks[-1] == pytest.approx(100.0)


def test_nyul_round_trips_through_json_spec(tmp_path):
    import json

    standard = NyulStandard((1.0, 50.0, 99.0), (0.0, 40.0, 100.0))
    (tmp_path / "nyul.json").write_text(json.dumps(standard.to_dict()))
    spec = intensity_spec_from({"method": "nyul", "nyul": "nyul.json"}, base_dir=tmp_path)
    assert spec.nyul == standard
    out = normalize_intensity(np.linspace(0, 10, 27).reshape(3, 3, 3), spec)
    assert out.dtype == np.float32 and np.all(np.diff(out.reshape(-1)) >= 0)  # monotone map


@pytest.mark.parametrize(
    "value, match",
    [("histogram", "allowed values"), ({"method": "nyul"}, "needs fitted landmarks"), ({"method": "percentile_zscore", "lower": 60, "upper": 40}, "lower < upper"),
     ({"method": "zscore", "typo": 1}, "unknown keys")],
    ids=["unknown-method", "nyul-without-landmarks", "bad-percentiles", "typo"],
)
def test_intensity_spec_errors_name_the_field(value, match):
    with pytest.raises(ValueError, match=match) as info:
        intensity_spec_from(value)
    assert "preprocessing.intensity" in str(info.value)


def test_fit_nyul_rejects_empty_and_constant():
    with pytest.raises(ValueError, match="empty"):
        fit_nyul([])
    with pytest.raises(ValueError, match="constant"):
        fit_nyul([np.ones((3, 3, 3))])
