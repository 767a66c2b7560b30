"""REML fit of the nested random-intercept model in O(n) per likelihood evaluation.

``y = X b + u_site + v_patient(site) + e`` with ``u ~ N(0, s2 * a)``, ``v ~ N(0, s2 * c)``, ``e ~ N(0, s2)``: the
model of the adjusted analysis (:mod:`audit.stats.adjusted`), which statsmodels' MixedLM fits with dense or sparse
per-site matrices (155 s per structure at 10,000 cases). Here each site's covariance
``V_i / s2 = I + c Z_p Z_p' + a 1 1'`` is inverted in closed form (Woodbury per patient block, then per site), so
``[X y]' V^-1 [X y]``, ``log|V|`` and their derivatives in ``(a, c)`` come from per-patient sums of ``[X y]``:
one evaluation costs O(patients x columns^2), whatever the number of exams per site.

* The REML log-likelihood is profiled over ``b`` and ``s2`` and maximised over the two variance ratios
  ``(a, c) >= 0`` (L-BFGS-B with the analytic gradient, from the best point of a coarse grid); a ratio may sit
  exactly at the boundary 0.
* Standard errors of ``b`` are those statsmodels reports: the ``b`` block of the inverse of minus the Hessian of
  the REML log-likelihood in ``(b, a, c)`` (ratios, not their square roots; scale profiled), cross terms
  included. The ``b``-block and the cross terms are analytic; the ``(a, c)`` block is a central difference of
  the analytic gradient (relative step 1e-4).
* A patient is a (site, patient) pair, as in statsmodels' variance components (defined within groups).

Agreement with MixedLM (tests/stats/test_stats_nested_lmm.py) is checked on planted designs: estimates to 1e-4
relative, standard errors to 1e-3, variance ratios where they are away from the boundary.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize

logger = logging.getLogger(__name__)

__all__ = ["NestedDesign", "NestedFit", "nested_design", "fit_nested_reml", "reml_loglik"]

_GRID = (0.0, 0.01, 0.1, 1.0, 10.0)
_MAX_RATIO = 1e8
_STEP = 1e-4


@dataclasses.dataclass(frozen=True)
class NestedDesign:
    """Sufficient statistics of ``Q = [X y]`` for the nested model.

    ``cross`` is ``Q'Q``; ``sums`` (G x q) and ``sizes`` (G,) are the column sums and exam counts of each cluster
    (a patient within a site, or a whole site when there is no patient component), ordered by site; ``starts``
    holds the first cluster of each site.
    """

    cross: np.ndarray
    sums: np.ndarray
    sizes: np.ndarray
    starts: np.ndarray
    site_of: np.ndarray
    n_obs: int
    n_fe: int
    patient_component: bool


def nested_design(y: np.ndarray, x: np.ndarray, sites: Sequence, patients: Sequence | None = None) -> NestedDesign:
    """Collect the sufficient statistics; ``patients=None`` fits the site intercept alone.

    Examples
    --------
    >>> d = nested_design(np.array([1.0, 2, 3, 4]), np.ones((4, 1)), ["s1", "s1", "s2", "s2"], ["p1", "p1", "p2", "p3"])
    >>> d.sizes.tolist(), d.starts.tolist()
    ([2, 1, 1], [0, 1])
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"x: must be a 2-D array with one row per observation ({y.size}); found shape {x.shape}")
    q = np.column_stack([x, y])
    site_codes = pd.factorize(np.asarray(sites, dtype=object))[0]
    if patients is None:
        cluster_codes = site_codes
    else:
        keys = pd.MultiIndex.from_arrays([site_codes, pd.factorize(np.asarray(patients, dtype=object))[0]])
        cluster_codes = pd.factorize(keys)[0]
    n_clusters = int(cluster_codes.max()) + 1
    cluster_site = np.zeros(n_clusters, dtype=np.int64)
    cluster_site[cluster_codes] = site_codes
    order = np.argsort(cluster_site, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(n_clusters)
    codes = rank[cluster_codes]
    sums = np.zeros((n_clusters, q.shape[1]))
    np.add.at(sums, codes, q)
    sizes = np.bincount(codes, minlength=n_clusters)
    site_of = cluster_site[order]
    starts = np.flatnonzero(np.r_[True, site_of[1:] != site_of[:-1]])
    return NestedDesign(q.T @ q, sums, sizes, starts, site_of, y.size, x.shape[1], patients is not None)


@dataclasses.dataclass(frozen=True)
class _Parts:
    m: np.ndarray  # Q' H^-1 Q
    logdet: float  # log|H|
    dm: tuple[np.ndarray, ...]  # d(Q' H^-1 Q) / d ratio
    trace: tuple[float, ...]  # tr(H^-1 dH / d ratio)


def _parts(d: NestedDesign, ratios: np.ndarray) -> _Parts:
    """``Q' H^-1 Q``, ``log|H|`` and their first derivatives at ``ratios = (a[, c])`` (``H = V / s2``)."""
    a = float(ratios[0])
    c = float(ratios[1]) if d.patient_component else 0.0
    n = d.sizes.astype(float)
    w = 1.0 / (1.0 + c * n)  # patient block: A^-1 1 = w 1
    ws = d.sums * w[:, None]
    t = np.add.reduceat(n * w, d.starts)  # 1' A_i^-1 1 per site
    big_t = np.add.reduceat(ws, d.starts, axis=0)  # Q_i' A_i^-1 1 per site
    den = 1.0 + a * t
    m = d.cross - (c * (ws.T @ d.sums) if c else 0.0) - (big_t * (a / den)[:, None]).T @ big_t
    logdet = float(np.sum(np.log1p(c * n)) + np.sum(np.log(den)))
    site_u = big_t / den[:, None]  # Q' H^-1 1_site
    dm = [-(site_u.T @ site_u)]
    trace = [float(np.sum(t / den))]
    if d.patient_component:
        patient_u = ws - (a * n * w / den[d.site_of])[:, None] * big_t[d.site_of]  # Q' H^-1 1_patient
        dm.append(-(patient_u.T @ patient_u))
        trace.append(float(np.sum(n * w - (a / den[d.site_of]) * (n * w) ** 2)))
    return _Parts(m, logdet, tuple(dm), tuple(trace))


def _profile(d: NestedDesign, parts: _Parts) -> tuple[float, np.ndarray, float, np.ndarray]:
    """REML log-likelihood profiled over b and s2, its gradient in the ratios, b-hat and the residual quadratic form."""
    p = d.n_fe
    mxx, mxy, myy = parts.m[:p, :p], parts.m[:p, p], parts.m[p, p]
    chol = np.linalg.cholesky(mxx)
    beta = np.linalg.solve(mxx, mxy)
    rss = float(myy - mxy @ beta)
    if not rss > 0:
        raise np.linalg.LinAlgError("the residual quadratic form is not positive: the design reproduces the outcome")
    dof = d.n_obs - p
    loglik = -0.5 * (dof * math.log(2 * math.pi * rss / dof) + dof + parts.logdet + 2 * np.sum(np.log(np.diag(chol))))
    return loglik, _ratio_gradient(d, parts, beta), beta, rss


def _ratio_gradient(d: NestedDesign, parts: _Parts, beta: np.ndarray) -> np.ndarray:
    """Gradient in the ratios of the REML log-likelihood at fixed ``b`` (scale profiled out).

    ``-1/2 [tr(H^-1 dH) + tr((X'H^-1 X)^-1 d(X'H^-1 X)) + (n - p) d(r'H^-1 r) / r'H^-1 r]``; at ``b``-hat it is the
    gradient of the profiled log-likelihood as well (the ``b`` derivative vanishes there).
    """
    p = d.n_fe
    r = np.r_[-beta, 1.0]
    rho = float(r @ parts.m @ r)
    mxx = parts.m[:p, :p]
    return np.array([-0.5 * (tr + np.trace(np.linalg.solve(mxx, dmk[:p, :p])) + (d.n_obs - p) * (r @ dmk @ r) / rho)
                     for dmk, tr in zip(parts.dm, parts.trace)])  # fmt: skip


def reml_loglik(d: NestedDesign, ratios: Sequence[float]) -> float:
    """REML log-likelihood at the variance ratios ``(site[, patient])`` to the residual variance, b and s2 profiled out.

    It equals statsmodels' ``MixedLM.loglike(params, profile_fe=True)`` with REML (tested).
    """
    return _profile(d, _parts(d, np.asarray(ratios, dtype=float)))[0]


@dataclasses.dataclass(frozen=True)
class NestedFit:
    """Result of :func:`fit_nested_reml`, with the attribute names of a statsmodels MixedLM result where they overlap.

    ``cov_re`` (1 x 1) and ``vcomp`` (0 or 1 values) are variances on the outcome's scale; ``ratios`` are the
    same divided by ``scale`` (the residual variance).
    """

    fe_params: np.ndarray
    bse_fe: np.ndarray
    cov_fe: np.ndarray
    scale: float
    cov_re: np.ndarray
    vcomp: np.ndarray
    ratios: np.ndarray
    llf: float
    converged: bool
    hessian_diagonal_ok: bool
    iterations: int
    design: NestedDesign


def _hessian(d: NestedDesign, ratios: np.ndarray, beta: np.ndarray, rss: float) -> np.ndarray:
    """Hessian of the REML log-likelihood in ``(b, ratios)`` at the estimate (statsmodels' ``MixedLM.hessian``)."""
    p, k = d.n_fe, ratios.size
    dof = d.n_obs - p
    parts = _parts(d, ratios)
    hess = np.zeros((p + k, p + k))
    hess[:p, :p] = -dof * parts.m[:p, :p] / rss
    for j, dmk in enumerate(parts.dm):
        hess[:p, p + j] = hess[p + j, :p] = dof * (dmk[:p, p] - dmk[:p, :p] @ beta) / rss
    for j in range(k):
        h = _STEP * max(abs(ratios[j]), 1e-2)
        up, down = ratios.copy(), ratios.copy()
        up[j] += h
        down[j] -= h
        hess[p:, p + j] = (_ratio_gradient(d, _parts(d, up), beta) - _ratio_gradient(d, _parts(d, down), beta)) / (2 * h)
    hess[p:, p:] = 0.5 * (hess[p:, p:] + hess[p:, p:].T)
    return hess


def fit_nested_reml(y: np.ndarray, x: np.ndarray, sites: Sequence, patients: Sequence | None = None) -> NestedFit:
    """REML fit of ``y = X b + u_site + v_patient(site) + e`` (``patients=None``: site intercept only).

    Parameters
    ----------
    y : numpy.ndarray
        (n,) outcome.
    x : numpy.ndarray
        (n x p) fixed-effects design of full column rank.
    sites, patients : sequence
        (n,) site and patient labels; a patient seen at two sites is two clusters (as in statsmodels).

    Returns
    -------
    NestedFit
        Fixed effects with statsmodels' standard errors, variance components and convergence flags.

    Raises
    ------
    numpy.linalg.LinAlgError
        When ``X' V^-1 X`` is singular or the residual quadratic form vanishes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> site = np.repeat(np.arange(8), 25)
    >>> y = 1.0 + rng.normal(0, 0.5, 8)[site] + rng.normal(0, 1.0, site.size)
    >>> fit = fit_nested_reml(y, np.ones((site.size, 1)), site)
    >>> fit.converged, round(float(fit.fe_params[0]), 3), round(float(fit.cov_re[0, 0]), 3), round(float(fit.bse_fe[0]), 3)
    (True, 1.162, 0.072, 0.117)

    statsmodels' ``MixedLM(y, x, groups=site).fit(reml=True)`` gives the same three numbers on these data.
    """
    d = nested_design(y, x, sites, patients)
    k = 2 if d.patient_component else 1

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loglik, grad, _, _ = _profile(d, _parts(d, theta))
        return -loglik / d.n_obs, -grad / d.n_obs

    grid = [np.array(g, dtype=float) for g in np.array(np.meshgrid(*[_GRID] * k)).reshape(k, -1).T]
    start = min(grid, key=lambda g: objective(g)[0])
    result = optimize.minimize(objective, start, jac=True, method="L-BFGS-B", bounds=[(0.0, _MAX_RATIO)] * k,
                               options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})  # fmt: skip
    ratios = np.clip(np.asarray(result.x, dtype=float), 0.0, None)
    loglik, grad, beta, rss = _profile(d, _parts(d, ratios))
    # converged: the optimizer says so, or the projected gradient (zero where a ratio rests on 0 and the
    # likelihood falls towards negative ratios) is negligible
    projected = np.where((ratios == 0.0) & (grad < 0), 0.0, grad) / d.n_obs
    converged = bool(result.success or np.max(np.abs(projected)) < 1e-7)
    scale = rss / (d.n_obs - d.n_fe)
    hess = _hessian(d, ratios, beta, rss)
    cov = np.linalg.inv(-hess)
    cov_fe = cov[: d.n_fe, : d.n_fe]
    with np.errstate(invalid="ignore"):
        bse = np.sqrt(np.diag(cov_fe))
    return NestedFit(fe_params=beta, bse_fe=bse, cov_fe=cov_fe, scale=scale, cov_re=np.array([[ratios[0] * scale]]),
                     vcomp=ratios[1:] * scale, ratios=ratios, llf=loglik, converged=converged,
                     hessian_diagonal_ok=bool(np.all(np.diag(hess) < 0)), iterations=int(result.nit), design=d)  # fmt: skip
