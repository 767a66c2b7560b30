"""The adjusted analysis's fallback when a mixed model cannot be fitted: OLS with site as a fixed effect.

Without repeated exams there is nothing to cluster: HC3 standard errors with t(n - p). With repeated exams, CR2
patient-clustered standard errors (Bell and McCaffrey 2002) with t(G - 1), and none below ``MIN_CLUSTERS``
patients (:mod:`audit.stats.identify`).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import stats

from audit.stats.identify import MIN_CLUSTERS, cr2_covariance

logger = logging.getLogger(__name__)

__all__ = ["site_fixed_effect_ols"]


def site_fixed_effect_ols(data: pd.DataFrame, design: pd.DataFrame, groups: str, repeats: bool, reason: Exception, level: float) -> tuple[pd.DataFrame, str]:
    """OLS with a fixed site effect; HC3 without repeated exams, CR2 by patient with them (none below MIN_CLUSTERS).

    Returns the coefficient table of ``design``'s columns (``data["_y"]`` on them plus site dummies) and a note saying
    why the mixed model was not fitted (``reason``) and which standard errors were used.

    Examples
    --------
    >>> data = pd.DataFrame({"_y": [1.0, 2, 3, 4, 5, 7], "site": list("aabbcc"), "patient_id": list("pqrstu")})
    >>> design = pd.DataFrame({"Intercept": 1.0, "x": [0, 1, 0, 1, 0, 1.0]})
    >>> table, note = site_fixed_effect_ols(data, design, "site", False, ValueError("a forced failure"), 0.95)
    >>> round(float(table.loc[1, "estimate"]), 3)  # the mean within-site difference: (1 + 1 + 2) / 3
    1.333
    >>> note.split(";")[0]
    'mixed model not fitted (a forced failure)'
    """
    import statsmodels.api as sm

    site_dummies = pd.get_dummies(data[groups].astype(str), prefix="_site", drop_first=True, dtype=float)
    x = pd.concat([design, site_dummies], axis=1)
    y = data["_y"].to_numpy(dtype=float)
    names = list(design.columns)
    n_clusters = int(data["patient_id"].nunique())
    if not repeats:
        result = sm.OLS(y, x).fit(cov_type="HC3", use_t=True)
        est, se, dof = result.params[names].to_numpy(), result.bse[names].to_numpy(), float(result.df_resid)
        how = "HC3 standard errors (one exam per patient: nothing to cluster)"
    else:
        result = sm.OLS(y, x).fit()
        est = result.params[names].to_numpy()
        dof = float(n_clusters - 1)
        if n_clusters >= MIN_CLUSTERS:
            cov = cr2_covariance(x.to_numpy(dtype=float), y - result.fittedvalues.to_numpy(), data["patient_id"].to_numpy())
            se = np.sqrt(np.diag(cov))[: len(names)]
            how = f"CR2 patient-clustered standard errors, t with {n_clusters - 1} df"
        else:
            se = np.full(len(names), np.nan)
            how = f"no standard errors: {n_clusters} patient clusters are fewer than {MIN_CLUSTERS}"
    q = stats.t.ppf(0.5 + level / 2.0, dof)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2 * stats.t.sf(np.abs(est / se), dof)
    table = pd.DataFrame({"term": names, "estimate": est, "se": se, "ci_low": est - q * se, "ci_high": est + q * se, "p_value": p,
                          "df": dof, "unit": "patient", "status": "estimated", "note": how})  # fmt: skip
    fixed = " with site as a fixed effect" if site_dummies.shape[1] else ""
    return table, f"mixed model not fitted ({reason}); OLS{fixed} and {how} instead"
