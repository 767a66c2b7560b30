"""Shape and stacking of the phantom's structures, measured from labels in nibabel's RAS orientation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synth_measure import canonical

from audit.ontology import LEVEL_VALUES
from audit.synthetic import DEFAULT_SITES, DISC_LEVELS, LEVELS, Patient, PlantedEffects, generate_case, iter_training_cases


def patient(age: float = 45.0, seed: int = 3) -> Patient:
    return Patient("P0001", age, "M", "Asian", "Not Hispanic or Latino", seed)


@pytest.mark.parametrize("profile", DEFAULT_SITES, ids=[s.name for s in DEFAULT_SITES])
def test_bodies_and_discs_stack_in_order_from_c2_down(profile) -> None:
    for seed in range(3):
        case = generate_case(np.random.default_rng(seed), profile, patient(seed=seed), PlantedEffects())
        levels, zooms = canonical(case, case.level_label)
        labels, _ = canonical(case, case.label)
        assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
        z_index = np.arange(levels.shape[2])
        order = []
        for body, disc in zip(LEVELS, (*DISC_LEVELS, None)):
            for name in (body, disc):
                if name is None or name not in LEVEL_VALUES:
                    continue
                mask = levels == LEVEL_VALUES[name]
                if mask.sum() > 0:
                    order.append((name, float((mask.sum(axis=(0, 1)) * z_index).sum() / mask.sum())))
        names = [n for n, _ in order]
        for lvl in LEVELS[:6]:  # C2..C7 always inside the field of view
            assert lvl in names
        for disc in DISC_LEVELS[:5]:
            assert disc in names
        heights = [z for _, z in order]
        assert heights == sorted(heights, reverse=True), f"not stacked superior to inferior: {order}"
        # coarse and level labels agree
        assert np.array_equal(labels == 1, np.isin(levels, [LEVEL_VALUES[v] for v in LEVELS]))


def test_body_dimensions_are_realistic() -> None:
    case = generate_case(np.random.default_rng(0), DEFAULT_SITES[1], patient(), PlantedEffects())  # RAS site, 1 mm
    levels, (dx, dy, dz) = canonical(case, case.level_label)
    c4 = levels == LEVEL_VALUES["C4"]
    mid = c4[c4.shape[0] // 2]
    col = int(round(np.nonzero(mid)[0].mean()))
    row = int(round(np.nonzero(mid)[1].mean()))
    assert 11.0 <= mid[col].sum() * dz <= 17.0  # S-I height
    assert 13.0 <= mid[:, row].sum() * dy <= 20.0  # A-P depth
    assert 12.0 <= c4.any(axis=(1, 2)).sum() * dx <= 27.0  # L-R width, in 3 mm slices


def test_canal_is_behind_bodies_and_holds_the_cord() -> None:
    case = generate_case(np.random.default_rng(1), DEFAULT_SITES[0], patient(), PlantedEffects())
    labels, _ = canonical(case, case.label)
    mid = labels[labels.shape[0] // 2]
    ap = np.arange(mid.shape[0])[:, None]
    for z in range(10, mid.shape[1] - 10, 10):
        column = mid[:, z]
        canal, cord = np.flatnonzero(column == 3), np.flatnonzero(column == 4)
        assert canal.size and cord.size
        assert canal.min() < cord.min() and cord.max() < canal.max()  # CSF on both sides of the cord
    bodies = np.nonzero(mid == 1)
    assert (ap * (mid == 3)).sum() / (mid == 3).sum() < bodies[0].mean()  # canal posterior (lower A index)


def test_thick_slices_average_over_their_thickness() -> None:
    """Noise-free, bias-free: a 3 mm slice equals the mean of the three 1 mm slices it covers (partial volume),
    and is far from the central 1 mm slice alone (which nearest sampling would give)."""
    quiet = dict(noise_sigma=1e-9, bias_strength=0.0, intensity_scale=1000.0)
    thin = dataclasses.replace(DEFAULT_SITES[1], slice_thickness_mm=1.0, n_slices=42, **quiet)  # RAS: slices on axis 0
    thick = dataclasses.replace(DEFAULT_SITES[1], slice_thickness_mm=3.0, n_slices=14, **quiet)
    p = patient(seed=4)
    a = generate_case(np.random.default_rng(0), thin, p, PlantedEffects.none()).image.astype(float)
    t = generate_case(np.random.default_rng(0), thick, p, PlantedEffects.none()).image.astype(float)
    triplets = a.reshape(14, 3, *a.shape[1:])
    mean_error = np.abs(t - triplets.mean(axis=1)).mean()
    assert mean_error < 2.0  # CSF = 1000; residual from 5 vs 15 sub-samples per 3 mm
    assert np.abs(t - triplets[:, 1]).mean() > 3 * mean_error


def test_iter_training_cases_is_reproducible_and_skips_the_hard_site() -> None:
    a = list(iter_training_cases(4, seed=1))
    b = list(iter_training_cases(4, seed=1))
    assert [c.site for c in a] == ["site-A", "site-B", "site-C", "site-A"]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.label, y.label)
        assert x.label.shape == x.image.shape and x.label.dtype == np.uint8
    c = next(iter_training_cases(1, seed=2))
    assert not np.array_equal(c.image, a[0].image)
