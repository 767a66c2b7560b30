"""The nested REML solver against statsmodels MixedLM (the oracle) on planted designs, and in the adjusted analysis.

Oracle: statsmodels MixedLM (REML, the same random site intercept and patient variance component) fitted with BFGS
and with Nelder-Mead, keeping the fit with the higher REML log-likelihood. The production call's L-BFGS stops short
of the maximum on several of these designs (see test_statsmodels_lbfgs_stops_short...), so it is not the oracle.
Tolerances: fixed effects within 1e-3 of their standard error, standard errors 1e-3 relative, variance ratios 1e-3
relative (or both below 1e-4 at the boundary), REML log-likelihood not below the oracle's (1e-6).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.regression.mixed_linear_model import MixedLMParams

from audit.protocol import AdjustedModelSettings
from audit.stats.adjusted import adjusted_effects
from audit.stats.identify import SITE_VARIANCE_RATIOS, flat_site_variance
from audit.stats.nested_lmm import fit_nested_reml, nested_design, reml_loglik


def planted_nested_design(seed: int, *, n_sites: int = 10, n_patients: int = 250, repeat_share: float = 0.4, site_sd: float = 0.3,
                          patient_sd: float = 0.5, unbalanced: bool = True) -> pd.DataFrame:  # fmt: skip
    """Patients spread over sites (site j drawn with weight j + 1 when ``unbalanced``), ``repeat_share`` of them with
    2-3 exams; ``y = 1 + 0.3 age - 0.2 [vendor = 1] + u_site + v_patient + e`` with SDs site_sd, patient_sd and 1."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_sites + 1.0) if unbalanced else np.ones(n_sites)
    site = rng.choice(n_sites, n_patients, p=weights / weights.sum())
    u, v = rng.normal(0, site_sd, n_sites), rng.normal(0, patient_sd, n_patients)
    rows = []
    for q in range(n_patients):
        for _ in range(1 + int(rng.random() < repeat_share) * int(rng.integers(1, 3))):
            rows.append((f"s{site[q]}", f"p{q}", rng.normal(), int(rng.integers(0, 3)), u[site[q]] + v[q]))
    df = pd.DataFrame(rows, columns=["site", "patient_id", "age", "vendor", "random"])
    df["y"] = 1 + 0.3 * df["age"] - 0.2 * (df["vendor"] == 1) + df["random"] + rng.normal(0, 1, len(df))
    return df


def statsmodels_model(df: pd.DataFrame):
    repeats = bool(df["patient_id"].duplicated().any())
    vc = {"patient": "0 + C(patient_id)"} if repeats else None
    return smf.mixedlm("y ~ age + C(vendor)", df, groups=df["site"], re_formula="1", vc_formula=vc), repeats


def statsmodels_oracle(model):
    """The better (higher REML log-likelihood) of statsmodels' BFGS and Nelder-Mead fits."""
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boundary and convergence notes of the oracle: numbers are compared
        for method in ("bfgs", "nm"):
            result = model.fit(reml=True, method=[method], maxiter=5000)
            if np.isfinite(result.llf) and np.all(np.isfinite(result.bse_fe)):
                fits.append(result)
    return max(fits, key=lambda r: r.llf)


def ratios_of(result) -> np.ndarray:
    return np.r_[np.asarray(result.cov_re).ravel(), np.asarray(result.vcomp)] / result.scale


DESIGNS = {
    "repeated-unbalanced": dict(seed=11),
    "site-intercept-only": dict(seed=12, repeat_share=0.0),
    "site-variance-0": dict(seed=13, n_sites=6, n_patients=120, site_sd=0.0),
    "patient-variance-0": dict(seed=15, patient_sd=0.0),
    "2000-cases-40-sites": dict(seed=14, n_sites=40, n_patients=1200, repeat_share=0.5),
}


@pytest.mark.parametrize("name", list(DESIGNS))
def test_fast_fit_equals_statsmodels_mixedlm(name):
    df = planted_nested_design(**DESIGNS[name])
    model, repeats = statsmodels_model(df)
    oracle = statsmodels_oracle(model)
    fit = fit_nested_reml(df["y"].to_numpy(), model.exog, df["site"].to_numpy(), df["patient_id"].to_numpy() if repeats else None)
    assert fit.converged
    assert fit.llf >= oracle.llf - 1e-6
    np.testing.assert_allclose(fit.llf, oracle.llf, rtol=0, atol=1e-4)
    se = oracle.bse_fe.to_numpy()
    np.testing.assert_allclose((fit.fe_params - oracle.fe_params.to_numpy()) / se, 0.0, atol=1e-3)
    np.testing.assert_allclose(fit.bse_fe, se, rtol=1e-3)
    theirs = ratios_of(oracle)
    for ours, ref in zip(fit.ratios, theirs):
        assert (ours < 1e-4 and ref < 1e-4) or abs(ours / ref - 1) < 1e-3, (fit.ratios, theirs)
    np.testing.assert_allclose(fit.scale, oracle.scale, rtol=1e-3)


def test_reml_loglik_is_statsmodels_loglike_along_the_site_variance_profile():
    """The flat-likelihood check profiles the site variance: our REML log-likelihood equals statsmodels' loglike
    (profile_fe=True, constants included) at every ratio it uses, so the check is the same with either solver."""
    df = planted_nested_design(21, n_patients=150)
    model, _ = statsmodels_model(df)
    statsmodels_oracle(model)  # statsmodels sets up loglike's penalty attributes in fit()
    d = nested_design(df["y"].to_numpy(), model.exog, df["site"].to_numpy(), df["patient_id"].to_numpy())
    fe = np.zeros(model.exog.shape[1])
    for site_ratio in SITE_VARIANCE_RATIOS:
        for patient_ratio in (1e-3, 0.3):  # statsmodels' loglike cannot take a patient ratio of exactly 0
            params = MixedLMParams.from_components(fe_params=fe, cov_re=np.array([[site_ratio]]), vcomp=np.array([patient_ratio]))
            np.testing.assert_allclose(reml_loglik(d, (site_ratio, patient_ratio)), model.loglike(params, profile_fe=True), rtol=1e-12)


def test_statsmodels_lbfgs_stops_short_where_the_fast_fit_reaches_the_reml_maximum():
    """Why the oracle is not the production call: on the repeated-exam design, MixedLM's L-BFGS (then Powell) stops
    1.5 log-likelihood units below the maximum, with the patient variance near 0; BFGS, Nelder-Mead and the fast
    fit agree on the maximum. statsmodels' own loglike confirms the fast fit's optimum is higher."""
    df = planted_nested_design(**DESIGNS["repeated-unbalanced"])
    model, _ = statsmodels_model(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        production = model.fit(reml=True, method=["lbfgs", "powell"])
    fit = fit_nested_reml(df["y"].to_numpy(), model.exog, df["site"].to_numpy(), df["patient_id"].to_numpy())
    params = MixedLMParams.from_components(fe_params=fit.fe_params, cov_re=fit.ratios[:1, None], vcomp=fit.ratios[1:])
    assert model.loglike(params, profile_fe=True) > production.llf + 1.0


def test_adjusted_model_flat_site_variance_is_detected_with_the_fast_solver():
    """The spanning design of test_flat_likelihood_is_detected_on_the_unidentified_fit, through the fast solver:
    the same span as statsmodels' profile at its own fit (both flat)."""
    from test_stats_identify import demo_like_sites

    table = demo_like_sites(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smf.mixedlm("value ~ C(vendor) + C(field_strength) + C(sex)", table, groups=table["site"])
        flat_sm, span_sm = flat_site_variance(model, model.fit(reml=True))
    fit = fit_nested_reml(table["value"].to_numpy(), model.exog, table["site"].to_numpy())
    values = [reml_loglik(fit.design, (r,)) for r in SITE_VARIANCE_RATIOS]
    assert flat_sm and max(values) - min(values) < 0.5 and abs((max(values) - min(values)) - span_sm) < 1e-6


def _adjusted(table: pd.DataFrame) -> pd.DataFrame:
    settings = AdjustedModelSettings(enabled=True, factors=("vendor", "age_years"))
    out, _ = adjusted_effects(table, settings=settings, structures=("vertebral_body",), bounded={"dice": True}, level=0.95)
    return out


def _as_analysis(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(structure="vertebral_body", metric="dice", status="ok", value=0.85 + 0.01 * df["y"], age_years=40 + 10 * df["age"],
                     vendor=df["vendor"].map({0: "A", 1: "B", 2: "C"}))  # fmt: skip


def test_statsmodels_fits_when_the_fast_solver_does_not_converge(monkeypatch):
    """A failed fast fit falls back to statsmodels MixedLM (the production call): the same terms and, for the linear
    model (where that call reaches the maximum on this design), the same numbers within the oracle tolerances."""
    import audit.stats.adjusted as adjusted

    table = _as_analysis(planted_nested_design(31, n_patients=120))
    fast = _adjusted(table)

    def fail(*args, **kwargs):
        raise np.linalg.LinAlgError("forced")

    monkeypatch.setattr(adjusted, "fit_nested_reml", fail)
    slow = _adjusted(table)
    assert fast["term"].tolist() == slow["term"].tolist() and (slow["model"].str.startswith("mixedlm")).all()
    fast, slow = fast[fast["model"] == "mixedlm"], slow[slow["model"] == "mixedlm"]
    np.testing.assert_allclose((fast["estimate"] - slow["estimate"]) / slow["se"], 0.0, atol=1e-3)
    np.testing.assert_allclose(fast["se"], slow["se"], rtol=1e-3)


def test_wald_intervals_cover_the_planted_effect():
    """200 planted designs (8 sites, 60 patients, a third with repeats): the 95% Wald interval of the vendor effect
    covers the truth in 0.95 +- 3.5 Monte Carlo SEs (SE 0.015) of them."""
    covered = []
    for seed in range(200):
        df = planted_nested_design(1000 + seed, n_sites=8, n_patients=60, repeat_share=0.33)
        x = np.column_stack([np.ones(len(df)), df["age"], df["vendor"] == 1, df["vendor"] == 2]).astype(float)
        fit = fit_nested_reml(df["y"].to_numpy(), x, df["site"].to_numpy(), df["patient_id"].to_numpy())
        covered.append(abs(fit.fe_params[2] - (-0.2)) <= 1.959964 * fit.bse_fe[2])
    assert abs(np.mean(covered) - 0.95) < 3.5 * np.sqrt(0.95 * 0.05 / 200)
