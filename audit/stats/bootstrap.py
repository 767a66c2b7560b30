"""Vectorized cluster bootstrap over patients, with percentile and BCa intervals.

The statistical unit is the patient: a resample draws patients with replacement (within each stratum,
so every stratum is present in every resample) and keeps all of a drawn patient's cases. A resampled
mean is ``(W @ sums) / (W @ counts)`` where ``W`` (B x P) holds how often each patient was drawn and
``sums``/``counts`` (P x K) hold each patient's value sum and case count for K (structure, metric)
columns at once: no per-resample Python loop, and one weight matrix serves every column.

Memory is bounded: resamples are drawn in blocks of rows (:data:`BLOCK_DRAWS` draws per block, 32-bit
indices), so 2,000 resamples of 60,000 patients never hold the full B x P matrix (960 MB as float64). The
generator's stream is consumed in the same order as one ``integers`` call of shape (B, n), so for a given seed the
resamples are identical to those of the unblocked code, and so are the resampled means, bit for bit, when that
code runs with one BLAS thread (tested). The products run on one BLAS thread: with several, OpenBLAS changes the
last bits of such products with the thread count (the unblocked code's means differed by ~1e-17 between
``OPENBLAS_NUM_THREADS=1`` and 2) and spends 2-8 times the CPU time on a loaded machine.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy import special
from threadpoolctl import ThreadpoolController

logger = logging.getLogger(__name__)

__all__ = [
    "patient_weights",
    "cluster_bootstrap_means",
    "jackknife_means",
    "percentile_interval",
    "bca_interval",
    "merge_small_strata",
    "MIN_STRATUM_PATIENTS",
    "BLOCK_DRAWS",
]

#: A stratum needs at least this many patients to be resampled on its own: a one-patient stratum is the same
#: patient in every resample and would add no variance (intervals too narrow). Smaller strata are merged.
MIN_STRATUM_PATIENTS = 2
#: Patient draws per block of resamples (rows x draws per row; at least 64 rows): a few MB of indices and weights
#: per block, so the block's counts stay in cache, whatever the number of patients or resamples.
BLOCK_DRAWS = 1 << 18
_ROW_ALIGN = 64


def merge_small_strata(strata: np.ndarray, min_size: int = MIN_STRATUM_PATIENTS) -> tuple[np.ndarray, list[int]]:
    """Merge strata with fewer than ``min_size`` patients so that every stratum varies across resamples.

    All small strata are pooled into one; if that pool still has fewer than ``min_size`` patients it joins
    the smallest adequate stratum; if no stratum is adequate every patient lands in one stratum.

    Parameters
    ----------
    strata : numpy.ndarray
        (P,) integer stratum code of each patient.
    min_size : int
        Smallest stratum resampled on its own.

    Returns
    -------
    tuple
        The new codes (P,) and the sorted list of the original codes that were merged.

    Examples
    --------
    >>> codes, merged = merge_small_strata(np.array([0, 0, 0, 1, 2, 2]))
    >>> codes.tolist(), merged
    ([0, 0, 0, 2, 2, 2], [1])
    """
    strata = np.asarray(strata)
    labels, sizes = np.unique(strata, return_counts=True)
    small = labels[sizes < min_size]
    if small.size == 0:
        return strata.copy(), []
    out = strata.copy()
    is_small = np.isin(strata, small)
    adequate = labels[sizes >= min_size]
    if is_small.sum() >= min_size or adequate.size == 0:
        target = small[0] if adequate.size else labels[0]
        out[is_small if adequate.size else np.ones_like(is_small)] = target
    else:  # one patient alone: join the smallest stratum that can be resampled
        target = adequate[np.argmin(sizes[sizes >= min_size])]
        out[is_small] = target
    return out, [int(v) for v in small]


def patient_weights(rng: np.random.Generator, n_patients: int, n_resamples: int, n_draws: int | None = None) -> np.ndarray:
    """Draw counts ``W`` (n_resamples x n_patients): patient ``j`` drawn ``W[b, j]`` times in resample ``b``.

    Each row sums to ``n_draws`` (default ``n_patients``: a bootstrap sample of the same size as the data).
    The whole matrix is returned; :func:`cluster_bootstrap_means` uses the same draws block by block.

    Examples
    --------
    >>> w = patient_weights(np.random.default_rng(0), 5, 3)
    >>> w.shape, w.sum(axis=1).tolist()
    ((3, 5), [5.0, 5.0, 5.0])
    """
    blocks = [w for _, w in _weight_blocks(rng, n_patients, n_resamples, n_draws)]
    return np.concatenate(blocks) if blocks else np.zeros((0, n_patients))


def _weight_blocks(rng: np.random.Generator, n_patients: int, n_resamples: int, n_draws: int | None = None):
    """Yield ``(first_row, W_block)``: consecutive row blocks of the weight matrix of :func:`patient_weights`.

    The rows are drawn with one ``integers`` call per block; ``Generator.integers`` fills row-major from one
    stream, so the blocks concatenate to exactly the draws of a single (B, n) call (32- and 64-bit indices
    give the same values for ranges below 2**32).
    """
    if n_patients < 1:
        raise ValueError(f"n_patients: must be at least 1; found {n_patients}")
    n_draws = n_patients if n_draws is None else int(n_draws)
    index = np.int32 if n_patients < 2**31 else np.int64
    # whole multiples of _ROW_ALIGN rows: the matrix product then runs every row through the same BLAS kernel
    # (row tiles of 4-16) as one product over all B rows, so the means are bit-identical to one unblocked product
    rows = max(_ROW_ALIGN, BLOCK_DRAWS // max(n_draws, n_patients, 1) // _ROW_ALIGN * _ROW_ALIGN)
    for start in range(0, n_resamples, rows):
        b = min(rows, n_resamples - start)
        draws = rng.integers(0, n_patients, size=(b, n_draws), dtype=index).astype(np.intp)
        draws += (np.arange(b, dtype=np.intp) * n_patients)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n_patients)
        yield start, counts.reshape(b, n_patients).astype(np.float64)


def cluster_bootstrap_means(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    n_resamples: int,
    rng: np.random.Generator,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Bootstrap distribution of the case-weighted mean of every column.

    Parameters
    ----------
    sums, counts : numpy.ndarray
        (P x K) per-patient sums of the values and numbers of cases with a value, per column.
    n_resamples : int
        B.
    rng : numpy.random.Generator
        Seeded generator.
    strata : numpy.ndarray, optional
        (P,) stratum label of each patient; patients are resampled within strata. With two or more strata each
        stratum of ``n_h >= 2`` patients gets ``n_h - 1`` draws weighted ``n_h / (n_h - 1)`` (rescaling bootstrap,
        McCarthy and Snowden 1985), so small strata do not make the interval too narrow; merge strata of one
        patient first (:func:`merge_small_strata`).

    Returns
    -------
    numpy.ndarray
        (B x K) resampled means; NaN where a resample has no case with a value in a column.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if sums.shape != counts.shape or sums.ndim != 2:
        raise ValueError(f"sums and counts must be 2-D arrays of one shape; found {sums.shape} and {counts.shape}")
    if strata is None:
        strata = np.zeros(sums.shape[0], dtype=np.int64)
    numerator = np.zeros((n_resamples, sums.shape[1]))
    denominator = np.zeros((n_resamples, sums.shape[1]))
    stratified = np.unique(strata).size > 1
    # (rows x P) @ (P x K) with few columns is memory-bound: BLAS threads only contend (2-8x the CPU time on a
    # loaded 2-core machine, docs/performance.md), and one thread makes the last bits independent of the machine
    with _blas_controller().limit(limits=1, user_api="blas"):
        _accumulate(sums, counts, strata, stratified, n_resamples, rng, numerator, denominator)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _accumulate(sums: np.ndarray, counts: np.ndarray, strata: np.ndarray, stratified: bool, n_resamples: int, rng: np.random.Generator,
                numerator: np.ndarray, denominator: np.ndarray) -> None:  # fmt: skip
    """Add each stratum's resampled sums and counts into ``numerator`` and ``denominator`` (B x K), block by block."""
    for stratum in np.unique(strata):
        idx = np.flatnonzero(strata == stratum)
        s_h, c_h = sums[idx], counts[idx]
        # n_h - 1 draws rescaled by n_h / (n_h - 1) (McCarthy and Snowden 1985): an unbiased variance of the
        # stratum mean even for small strata, where n_h draws understate it by the factor (n_h - 1) / n_h
        rescaled = stratified and idx.size >= 2
        n_draws = idx.size - 1 if rescaled else idx.size
        for start, weights in _weight_blocks(rng, idx.size, n_resamples, n_draws):
            if rescaled:
                weights *= idx.size / (idx.size - 1)
            rows = slice(start, start + weights.shape[0])
            numerator[rows] += weights @ s_h
            denominator[rows] += weights @ c_h


def jackknife_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Leave-one-patient-out means (P x K), the input of the BCa acceleration."""
    total_s = sums.sum(axis=0)
    total_c = counts.sum(axis=0)
    rest_c = total_c[None, :] - counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rest_c > 0, (total_s[None, :] - sums) / np.where(rest_c > 0, rest_c, 1.0), np.nan)


def percentile_interval(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column of ``boot`` (B x K), ignoring NaN resamples."""
    alpha = (1.0 - level) / 2.0
    return _nanquantile(boot, alpha), _nanquantile(boot, 1.0 - alpha)


def bca_interval(boot: np.ndarray, estimate: np.ndarray, jackknife: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected and accelerated interval (Efron 1987) of each column.

    ``z0`` is the normal quantile of the share of resamples below the estimate (ties count half);
    the acceleration ``a`` comes from the jackknife: ``sum(d^3) / (6 * sum(d^2)^1.5)`` with
    ``d = mean(jackknife) - jackknife``. Columns where either is undefined fall back to percentile.
    """
    boot = np.asarray(boot, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    valid = np.isfinite(boot)
    n_valid = valid.sum(axis=0)
    below = np.where(valid, boot < estimate[None, :], False).sum(axis=0) + 0.5 * np.where(valid, boot == estimate[None, :], False).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = below / n_valid
        z0 = special.ndtri(np.clip(share, 1e-10, 1 - 1e-10))
        d = np.nanmean(jackknife, axis=0)[None, :] - jackknife
        num = np.nansum(d**3, axis=0)
        den = 6.0 * np.nansum(d**2, axis=0) ** 1.5
        accel = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        alpha = (1.0 - level) / 2.0
        out = []
        for q in (alpha, 1.0 - alpha):
            zq = special.ndtri(q)
            adj = special.ndtr(z0 + (z0 + zq) / (1.0 - accel * (z0 + zq)))
            out.append(np.where(np.isfinite(adj), adj, q))
    lo = np.array([_nanquantile(boot[:, [k]], out[0][k])[0] for k in range(boot.shape[1])])
    hi = np.array([_nanquantile(boot[:, [k]], out[1][k])[0] for k in range(boot.shape[1])])
    return lo, hi


def _nanquantile(boot: np.ndarray, q: float) -> np.ndarray:
    """Column quantiles ignoring NaN; all-NaN columns give NaN without a warning."""
    boot = np.asarray(boot, dtype=np.float64)
    out = np.full(boot.shape[1], np.nan)
    finite_cols = np.isfinite(boot).any(axis=0)
    if finite_cols.all():
        return np.nanquantile(boot, q, axis=0) if np.isnan(boot).any() else np.quantile(boot, q, axis=0)
    if finite_cols.any():
        out[finite_cols] = np.nanquantile(boot[:, finite_cols], q, axis=0)
    return out
