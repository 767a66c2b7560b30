"""Permutation gap tests against scipy.stats.permutation_test (exact enumeration as the oracle) and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from stats_builders import analysis_table_with_gap, settings, vendor_axis

from audit.stats import analyze
from audit.stats.intervals import omnibus_test, test_for_metric, two_group_test
from audit.stats.permutation import permutation_omnibus, permutation_two_group

HIGHER = {"dice": True, "hd95": False}


def scipy_exact_two_group(x, y) -> float:
    """scipy's exact permutation p-value of |mean(x) - mean(y)| (every relabelling enumerated)."""
    res = stats.permutation_test((x, y), lambda a, b, axis: np.abs(a.mean(axis=axis) - b.mean(axis=axis)), permutation_type="independent",
                                 alternative="greater", n_resamples=np.inf, vectorized=True)  # fmt: skip
    return float(res.pvalue)


def between_ss(*samples, axis):
    pooled = np.concatenate(samples, axis=axis)
    return sum(s.sum(axis=axis) ** 2 / s.shape[axis] for s in samples) - pooled.sum(axis=axis) ** 2 / pooled.shape[axis]


@pytest.mark.parametrize(("nx", "ny", "shift", "discrete"), [(5, 6, 0.03, False), (4, 4, 0.0, False), (6, 7, 0.02, True), (2, 9, 0.05, False)])
def test_exact_p_equals_scipy_exact(nx, ny, shift, discrete):
    """C(n, nx) <= n_permutations: every relabelling is enumerated, so the p-value is scipy's exact one."""
    rng = np.random.default_rng(nx * 100 + ny)
    x, y = rng.normal(0.9, 0.03, nx), rng.normal(0.9 - shift, 0.03, ny)
    if discrete:  # many ties: values on a 0.01 grid
        x, y = np.round(x, 2), np.round(y, 2)
    assert math.comb(nx + ny, nx) <= 10_000
    d, p = permutation_two_group(x, y, n_permutations=10_000, rng=np.random.default_rng(0))
    assert d == pytest.approx(x.mean() - y.mean(), rel=1e-12)
    assert p == pytest.approx(scipy_exact_two_group(x, y), rel=1e-12, abs=0)


def test_monte_carlo_p_is_within_monte_carlo_error_of_the_exact_p():
    """9 vs 9 (48,620 relabellings) with 20,000 random ones: |p - p_exact| <= 3 SE + 1/B."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(0.90, 0.03, 9), rng.normal(0.87, 0.03, 9)
    exact = scipy_exact_two_group(x, y)
    b = 20_000
    _, p = permutation_two_group(x, y, n_permutations=b, rng=np.random.default_rng(1))
    assert abs(p - exact) <= 3 * math.sqrt(exact * (1 - exact) / b) + 1 / b, (p, exact)
    assert 0.01 < exact < 0.5  # a p-value in the informative range, not a trivial 0 or 1


def test_omnibus_p_is_within_monte_carlo_error_of_scipy_exact():
    rng = np.random.default_rng(7)
    samples = [rng.normal(0.90, 0.03, 3), rng.normal(0.88, 0.03, 3), rng.normal(0.86, 0.03, 4)]
    exact = stats.permutation_test(samples, between_ss, permutation_type="independent", alternative="greater", n_resamples=np.inf, vectorized=True)
    b = 20_000
    stat, p = permutation_omnibus(samples, n_permutations=b, rng=np.random.default_rng(2))
    assert stat == pytest.approx(float(exact.statistic), rel=1e-10)
    assert abs(p - exact.pvalue) <= 3 * math.sqrt(exact.pvalue * (1 - exact.pvalue) / b) + 1 / b, (p, exact.pvalue)
    name, stat2, p2 = omnibus_test(samples, "permutation", rng=np.random.default_rng(2), n_permutations=b)
    assert (name, stat2, p2) == ("permutation_between_ss", stat, p)  # same stream, same answer


def test_null_p_values_are_calibrated():
    """No difference, 8 vs 10 patients, skewed (beta) values: P(p <= 0.05) within 3 SE of 0.05 over 400 replicates."""
    rng = np.random.default_rng(11)
    reps, hits = 400, 0
    for _ in range(reps):
        x, y = 1 - rng.beta(2, 30, 8), 1 - rng.beta(2, 30, 10)
        hits += permutation_two_group(x, y, n_permutations=1000, rng=rng)[1] <= 0.05
    assert abs(hits / reps - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / reps), hits / reps


def test_monte_carlo_p_is_never_zero_and_reproducible():
    x, y = np.linspace(0.95, 0.96, 30), np.linspace(0.80, 0.81, 30)  # completely separated
    p1 = permutation_two_group(x, y, n_permutations=1000, rng=np.random.default_rng(3))[1]
    p2 = permutation_two_group(x, y, n_permutations=1000, rng=np.random.default_rng(3))[1]
    assert p1 == p2 == 1 / 1001
    assert np.isnan(permutation_two_group(x[:1], y, n_permutations=1000, rng=np.random.default_rng(3))[1])
    with pytest.raises(ValueError, match="rng: a numpy Generator is required"):
        two_group_test(x, y, "permutation")
    with pytest.raises(ValueError, match=r"gap_test: allowed values are \['auto', 'permutation'\]; found 'exact'"):
        test_for_metric("dice", "exact")


def run(table, **stats_overrides):
    return analyze(table, structures=("vertebral_body",), metrics=("dice",), higher_is_better=HIGHER, subgroups=vendor_axis(),
                   statistics=settings(**stats_overrides))  # fmt: skip


def test_analyze_with_permutation_tests_finds_a_planted_gap_and_keeps_the_bootstrap():
    table = analysis_table_with_gap(25, gap=0.04, groups=("A", "B", "C"), seed=5)
    auto = run(table)
    perm = run(table, gap_test="permutation", permutation_iterations=2000)
    vs_ref = perm.gaps[perm.gaps["comparison"] == "vs_reference"].set_index("group")
    # worst versus best is the simultaneous max-T procedure whatever gap_test says (one valid largest-gap procedure)
    assert set(perm.gaps["test"]) == {"permutation", "max-T bootstrap over all pairs (simultaneous)"}
    assert bool(vs_ref.loc["C", "significant"]) and vs_ref.loc["C", "p_value"] < 0.01
    np.testing.assert_allclose(vs_ref.loc["C", "statistic"], vs_ref.loc["C", "difference"], rtol=1e-12)  # statistic = difference of means
    assert perm.settings["gap_test"] == "permutation" and "permutation" in perm.settings["tests"]["all metrics"]
    # the bootstrap streams do not depend on the test choice: estimates and CIs are identical
    pd.testing.assert_frame_equal(auto.group_estimates, perm.group_estimates)
    again = run(table, gap_test="permutation", permutation_iterations=2000)
    pd.testing.assert_frame_equal(perm.gaps, again.gaps)  # seeded: same p-values
