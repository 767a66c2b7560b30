"""Cluster bootstrap against scipy's bootstrap (i.i.d. case) and hand-checkable weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from audit.stats.bootstrap import (
    bca_interval,
    cluster_bootstrap_means,
    jackknife_means,
    patient_weights,
    percentile_interval,
)


def test_weights_are_bootstrap_counts():
    w = patient_weights(np.random.default_rng(0), 7, 500)
    assert w.shape == (500, 7)
    np.testing.assert_array_equal(w.sum(axis=1), 7)
    # each patient is drawn once per resample on average
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.15)


def test_resampled_mean_is_case_weighted():
    sums = np.array([[3.0], [10.0]])  # patient 1: 3 cases summing to 3; patient 2: 2 cases summing to 10
    counts = np.array([[3.0], [2.0]])
    boot = cluster_bootstrap_means(sums, counts, n_resamples=400, rng=np.random.default_rng(1))
    possible = {1.0, 5.0, (3 + 10) / 5}
    assert set(np.round(np.unique(boot), 12)) <= {round(v, 12) for v in possible}


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_iid_interval_matches_scipy_bootstrap(method):
    """One case per patient: the cluster bootstrap is the ordinary bootstrap; compare with scipy.

    Tolerance: Monte Carlo error of a 20,000-resample tail quantile is a few hundredths of a standard error; 0.1 SE allowed.
    """
    rng = np.random.default_rng(3)
    x = rng.beta(8, 2, size=60)
    sums, counts = x[:, None], np.ones((60, 1))
    boot = cluster_bootstrap_means(sums, counts, n_resamples=20000, rng=np.random.default_rng(4))
    if method == "percentile":
        lo, hi = percentile_interval(boot, 0.95)
    else:
        lo, hi = bca_interval(boot, np.array([x.mean()]), jackknife_means(sums, counts), 0.95)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method=method, confidence_level=0.95, random_state=np.random.default_rng(5)).confidence_interval
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert abs(lo[0] - ref.low) < 0.1 * se and abs(hi[0] - ref.high) < 0.1 * se


def test_stratified_resampling_keeps_every_stratum():
    """Stratum 0 values are 0 and stratum 1 values are 1 with fixed sizes: every resampled mean is exactly 0.5."""
    sums = np.array([[0.0]] * 4 + [[1.0]] * 4)
    counts = np.ones((8, 1))
    boot = cluster_bootstrap_means(sums, counts, n_resamples=300, rng=np.random.default_rng(0), strata=np.array([0] * 4 + [1] * 4))
    np.testing.assert_allclose(boot, 0.5)


def test_empty_column_gives_nan_not_error():
    boot = cluster_bootstrap_means(np.zeros((3, 1)), np.zeros((3, 1)), n_resamples=10, rng=np.random.default_rng(0))
    assert np.isnan(boot).all()
    lo, hi = percentile_interval(boot, 0.95)
    assert np.isnan(lo[0]) and np.isnan(hi[0])


def unblocked_reference_means(sums: np.ndarray, counts: np.ndarray, n_resamples: int, rng: np.random.Generator, strata: np.ndarray) -> np.ndarray:
    """The bootstrap as written before blocking (one (B, n) int64 draw and one B x P float64 matrix per stratum)."""
    numerator = np.zeros((n_resamples, sums.shape[1]))
    denominator = np.zeros((n_resamples, sums.shape[1]))
    for stratum in np.unique(strata):
        idx = np.flatnonzero(strata == stratum)
        n, draws_per_row = idx.size, idx.size - 1
        draws = rng.integers(0, n, size=(n_resamples, draws_per_row))
        w = np.bincount((draws + (np.arange(n_resamples) * n)[:, None]).ravel(), minlength=n_resamples * n)
        w = w.reshape(n_resamples, n).astype(np.float64) * (n / (n - 1))
        numerator += w @ sums[idx]
        denominator += w @ counts[idx]
    return numerator / denominator


def test_blocked_resamples_are_identical_to_one_unblocked_draw(monkeypatch):
    """Blocks of 64 resamples (forced: BLOCK_DRAWS = 1) draw the same stream as one (B, n) call: the weights are
    equal and the resampled means are bit-identical to the previous unblocked code for the same seed (run, like the
    blocked code, with one BLAS thread), with a resample count (1000) that is not a multiple of the block rows."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr("audit.stats.bootstrap.BLOCK_DRAWS", 1)
    rng = np.random.default_rng(7)
    sums, counts = rng.normal(size=(500, 3)), rng.integers(1, 4, size=(500, 3)).astype(float)
    strata = rng.integers(0, 4, 500)
    full = np.random.default_rng(3).integers(0, 37, size=(1000, 37))
    expected_w = np.stack([np.bincount(row, minlength=37) for row in full]).astype(float)
    np.testing.assert_array_equal(patient_weights(np.random.default_rng(3), 37, 1000), expected_w)
    blocked = cluster_bootstrap_means(sums, counts, n_resamples=1000, rng=np.random.default_rng(11), strata=strata)
    with threadpool_limits(limits=1, user_api="blas"):
        reference = unblocked_reference_means(sums, counts, 1000, np.random.default_rng(11), strata)
    np.testing.assert_array_equal(blocked, reference)
