"""Permutation tests of equal group means on patient-level values (``statistics.gap_test: permutation``).

Two groups: the statistic is the difference of means; the two-sided p-value is the share of relabellings
whose absolute difference is at least the observed one. When the number of distinct relabellings
``C(n, n_x)`` is at most ``n_permutations`` they are all enumerated (exact p-value); otherwise
``n_permutations`` random relabellings give ``p = (1 + hits) / (1 + B)`` (never 0; Phipson and Smyth 2010).

Several groups: the statistic is the between-group sum of squares ``sum_g n_g (mean_g - mean)^2`` (for fixed
data a monotone function of the one-way F statistic), and ``p = (1 + hits) / (1 + B)`` over random
relabellings.

Resampling is vectorized in chunks (no per-permutation Python loop). Ties are counted as at least as
extreme within a relative tolerance of 1e-12, so floating-point noise does not break exact ties.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["permutation_two_group", "permutation_omnibus", "PERMUTATION_CHUNK"]

#: Relabellings drawn per vectorized chunk (bounds memory at chunk x n values).
PERMUTATION_CHUNK = 2048
_RTOL = 1e-12


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def _check(n_permutations: int) -> None:
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations: must be a positive integer; got {n_permutations!r}")


def permutation_two_group(x: np.ndarray, y: np.ndarray, *, n_permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Two-sided permutation test of equal means.

    Parameters
    ----------
    x, y : numpy.ndarray
        Patient-level values of the two groups (non-finite values dropped).
    n_permutations : int
        Random relabellings when the exact enumeration would be larger than this.
    rng : numpy.random.Generator
        Source of the random relabellings (unused for exact tests).

    Returns
    -------
    tuple of float
        ``(mean(x) - mean(y), p)``; ``(nan, nan)`` when a group has fewer than 2 values.
    """
    _check(n_permutations)
    x, y = _finite(x), _finite(y)
    if x.size < 2 or y.size < 2:
        return (math.nan, math.nan)
    pooled = np.concatenate([x, y])
    n, nx, ny = pooled.size, x.size, y.size
    total = float(pooled.sum())
    observed = float(x.mean() - y.mean())
    threshold = abs(observed) * (1 - _RTOL) - 1e-300

    def extreme(sums: np.ndarray) -> int:
        d = sums / nx - (total - sums) / ny
        return int(np.count_nonzero(np.abs(d) >= threshold))

    if math.comb(n, nx) <= n_permutations:
        hits = 0
        combos = itertools.combinations(range(n), nx)
        while chunk := list(itertools.islice(combos, PERMUTATION_CHUNK)):
            hits += extreme(pooled[np.array(chunk)].sum(axis=1))
        return observed, hits / math.comb(n, nx)
    hits, done = 0, 0
    while done < n_permutations:
        b = min(PERMUTATION_CHUNK, n_permutations - done)
        # a uniform random nx-subset per row: the nx smallest of n random 64-bit keys (ties have probability ~n^2 / 2^65)
        keys = rng.integers(0, np.iinfo(np.uint64).max, size=(b, n), dtype=np.uint64, endpoint=True)
        chosen = np.argpartition(keys, nx - 1, axis=1)[:, :nx]
        hits += extreme(pooled[chosen].sum(axis=1))
        done += b
    return observed, (1 + hits) / (1 + n_permutations)


def permutation_omnibus(samples: list[np.ndarray], *, n_permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Permutation test of equal means across groups (between-group sum of squares).

    Returns
    -------
    tuple of float
        ``(between-group sum of squares, p)``; ``(nan, nan)`` with fewer than 2 groups of at least 2 values.
    """
    _check(n_permutations)
    samples = [s for s in (_finite(s) for s in samples) if s.size >= 2]
    if len(samples) < 2:
        return (math.nan, math.nan)
    pooled = np.concatenate(samples)
    pooled = pooled - pooled.mean()  # the statistic is shift-invariant; centring avoids cancellation in sum^2 / n
    samples = np.split(pooled, np.cumsum([s.size for s in samples])[:-1])
    sizes = np.array([s.size for s in samples])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = pooled.size
    correction = pooled.sum() ** 2 / n

    def between(group_sums: np.ndarray) -> np.ndarray:
        return (group_sums**2 / sizes).sum(axis=-1) - correction

    observed = float(between(np.array([s.sum() for s in samples])))
    threshold = observed * (1 - _RTOL) - 1e-300
    hits, done = 0, 0
    while done < n_permutations:
        b = min(PERMUTATION_CHUNK, n_permutations - done)
        # shuffle the pooled values in each row; consecutive blocks of the group sizes are the relabelled groups
        shuffled = rng.permuted(np.broadcast_to(pooled, (b, n)), axis=1)
        hits += int(np.count_nonzero(between(np.add.reduceat(shuffled, starts, axis=1)) >= threshold))
        done += b
    return max(observed, 0.0), (1 + hits) / (1 + n_permutations)
