"""Identifiability checks before an adjusted fit, and small-sample cluster-robust standard errors.

* **A level at a single site.** A 0/1 design column that is 1 at one site only (Philips seen at one hospital) is
  that site's effect plus the level's: confounded with the site, not identifiable.
* **Site-level fixed effects.** A design column that lies in the span of the site indicators (vendor, field
  strength: constant within site) is estimated only from differences between sites. With a random site
  intercept it is identified only when the number of sites exceeds the rank of ``[intercept, site-level
  columns]``; the difference is the between-site residual degrees of freedom (``between_df``). When it is 0
  the site-level columns span the site indicators: the site variance has no information (a flat likelihood)
  and neither have those effects. Their inference, when identified, uses Student-t with ``between_df``
  degrees of freedom (the "containment" rule), not the normal approximation.
* **Flat likelihood.** The REML log-likelihood is profiled over the site variance (ratio to the residual
  variance from 1e-4 to 1e2); a range below :data:`FLAT_LOGLIK` log-likelihood units means the data do not
  determine it.
* **Cluster-robust standard errors** with few clusters are biased downward; CR2 (Bell and McCaffrey 2002) with
  ``t(G - 1)`` is used, and below :data:`MIN_CLUSTERS` clusters no robust standard error is given. With one
  observation per cluster there is nothing to cluster: HC3.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["site_level_design_columns", "single_site_indicators", "between_site_df", "flat_site_variance", "flat_profile", "cr2_covariance",
           "MIN_CLUSTERS", "FLAT_LOGLIK", "SITE_VARIANCE_RATIOS"]  # fmt: skip

#: Fewest clusters for which a cluster-robust (CR2) standard error is reported.
MIN_CLUSTERS = 10
#: A log-likelihood range (over site-variance ratios 1e-4 .. 1e2) below this is flat: the variance is not identified.
FLAT_LOGLIK = 0.5
#: Site-variance ratios (to the residual variance) at which the REML log-likelihood is profiled.
SITE_VARIANCE_RATIOS = (1e-4, 1e-2, 1.0, 1e2)
_RTOL = 1e-8


def _indicators(groups: np.ndarray) -> np.ndarray:
    codes, uniques = pd.factorize(np.asarray(groups))
    out = np.zeros((codes.size, len(uniques)))
    out[np.arange(codes.size), codes] = 1.0
    return out


def site_level_design_columns(design: pd.DataFrame, groups: np.ndarray) -> list[str]:
    """Names of the non-constant design columns that are constant within every group (in the span of the indicators).

    Examples
    --------
    >>> X = pd.DataFrame({"Intercept": 1.0, "vendor[T.B]": [0, 0, 1, 1.0], "age": [30, 40, 50, 60.0]})
    >>> site_level_design_columns(X, np.array(["s1", "s1", "s2", "s2"]))
    ['vendor[T.B]']
    """
    s = _indicators(groups)
    out = []
    for name in design.columns:
        x = design[name].to_numpy(dtype=float)
        if np.ptp(x) == 0:
            continue
        coef, *_ = np.linalg.lstsq(s, x, rcond=None)
        if np.linalg.norm(x - s @ coef) <= _RTOL * max(1.0, np.linalg.norm(x)):
            out.append(name)
    return out


def single_site_indicators(design: pd.DataFrame, groups: np.ndarray, site_columns: list[str]) -> dict[str, str]:
    """Site-level 0/1 columns that are 1 at exactly one group (a level seen at one site): ``{column: site}``.

    Examples
    --------
    >>> X = pd.DataFrame({"vendor[T.B]": [0, 0, 1, 1.0, 0, 0], "vendor[T.C]": [1, 1, 0, 0, 0, 0.0]})
    >>> single_site_indicators(X, np.array(["s1", "s1", "s2", "s2", "s3", "s3"]), ["vendor[T.B]", "vendor[T.C]"])
    {'vendor[T.B]': 's2', 'vendor[T.C]': 's1'}
    """
    groups = np.asarray(groups)
    out = {}
    for c in site_columns:
        x = design[c].to_numpy(dtype=float)
        if not np.isin(x, (0.0, 1.0)).all():
            continue
        where = pd.unique(groups[x == 1.0])
        if where.size == 1:
            out[c] = str(where[0])
    return out


def between_site_df(design: pd.DataFrame, groups: np.ndarray, site_columns: list[str]) -> int:
    """Number of sites minus the rank of ``[intercept, site-level columns]`` at the site level."""
    n_sites = int(pd.unique(np.asarray(groups)).size)
    site_rows = design.assign(_g=np.asarray(groups)).groupby("_g", sort=False)[site_columns].first() if site_columns else pd.DataFrame()
    x = np.column_stack([np.ones(n_sites), site_rows.to_numpy(dtype=float)]) if site_columns else np.ones((n_sites, 1))
    return n_sites - int(np.linalg.matrix_rank(x))


def flat_site_variance(model, result) -> tuple[bool, float]:
    """Profile the REML log-likelihood of a fitted statsmodels MixedLM over the site-variance ratio.

    The fixed effects and the residual variance are profiled out; other variance components stay at their
    fitted ratios. Returns ``(flat, range)`` where ``range`` is max - min of the log-likelihood over ratios
    ``1e-4, 1e-2, 1, 1e2`` (to the residual variance) and ``flat`` is ``range < FLAT_LOGLIK``.
    """
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    fitted = result.params_object
    values = []
    for ratio in SITE_VARIANCE_RATIOS:
        cov_re = np.atleast_2d(np.asarray(fitted.cov_re, dtype=float)).copy()
        cov_re[0, 0] = ratio
        params = MixedLMParams.from_components(fe_params=np.asarray(fitted.fe_params), cov_re=cov_re, vcomp=np.asarray(fitted.vcomp))
        with np.errstate(all="ignore"):
            values.append(float(model.loglike(params, profile_fe=True)))
    return flat_profile(values)


def flat_profile(values) -> tuple[bool, float]:
    """``(flat, range)`` of profiled log-likelihood values: the range of the finite ones, flat below :data:`FLAT_LOGLIK`.

    Examples
    --------
    >>> flat_profile([-10.0, -10.1, -10.2, float("nan")])
    (True, 0.1999999999999993)
    """
    finite = [float(v) for v in values if np.isfinite(v)]
    span = max(finite) - min(finite) if len(finite) >= 2 else math.nan
    return bool(np.isfinite(span) and span < FLAT_LOGLIK), span


def cr2_covariance(x: np.ndarray, residuals: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """CR2 cluster-robust covariance of OLS coefficients (Bell and McCaffrey 2002).

    ``V = B (sum_g X_g' A_g e_g e_g' A_g X_g) B`` with ``B = (X'X)^-1`` and ``A_g = (I - H_gg)^-1/2``,
    ``H_gg = X_g B X_g'``. With one observation per cluster it equals HC2 (tested against statsmodels).
    """
    x = np.asarray(x, dtype=float)
    e = np.asarray(residuals, dtype=float)
    bread = np.linalg.pinv(x.T @ x)
    meat = np.zeros((x.shape[1], x.shape[1]))
    codes = pd.factorize(np.asarray(clusters))[0]
    for g in range(codes.max() + 1):
        idx = np.flatnonzero(codes == g)
        xg = x[idx]
        h = xg @ bread @ xg.T
        vals, vecs = np.linalg.eigh(np.eye(idx.size) - h)
        inv_sqrt = vecs @ np.diag(np.where(vals > 1e-12, 1.0 / np.sqrt(np.clip(vals, 1e-12, None)), 0.0)) @ vecs.T
        u = xg.T @ (inv_sqrt @ e[idx])
        meat += np.outer(u, u)
    return bread @ meat @ bread
