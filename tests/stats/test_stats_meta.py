"""New-site meta-analysis: REML tau^2 against a direct maximization and metafor's published values, Hartung-Knapp
against statsmodels, prediction-interval coverage for a new site, and acceptance scope new_site."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from stats_builders import settings, vendor_axis
from statsmodels.stats.meta_analysis import combine_effects

from audit.protocol import AcceptanceCriterion, ProtocolError, protocol_from_dict
from audit.stats import analyze, new_site_table, random_effects, reml_tau2

# BCG vaccine trials (Colditz et al. 1994; metafor's dat.bcg): tpos, tneg, cpos, cneg per trial.
BCG = [(4, 119, 11, 128), (6, 300, 29, 274), (3, 228, 11, 209), (62, 13536, 248, 12619), (33, 5036, 47, 5761), (180, 1361, 372, 1079),
       (8, 2537, 10, 619), (505, 87886, 499, 87892), (29, 7470, 45, 7232), (17, 1699, 65, 1600), (186, 50448, 141, 27197),
       (5, 2493, 3, 2338), (27, 16886, 29, 17825)]  # fmt: skip


def bcg_log_risk_ratios() -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d = (np.array(x, dtype=float) for x in zip(*BCG))
    return np.log(a / (a + b)) - np.log(c / (c + d)), 1 / a - 1 / (a + b) + 1 / c - 1 / (c + d)


def restricted_loglik(tau2: float, y: np.ndarray, v: np.ndarray) -> float:
    """The REML log-likelihood of the random-effects model, written out (Viechtbauer 2005, eq. 8)."""
    w = 1 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    return -0.5 * (np.sum(np.log(v + tau2)) + np.log(np.sum(w)) + np.sum(w * (y - mu) ** 2))


@pytest.mark.parametrize("data", ["bcg", "sites"])
def test_reml_tau2_maximizes_the_restricted_likelihood(data):
    if data == "bcg":
        y, v = bcg_log_risk_ratios()
    else:
        rng = np.random.default_rng(3)
        y, v = 0.85 + rng.normal(0, 0.03, 9), rng.uniform(1e-4, 5e-4, 9)
    best = optimize.minimize_scalar(lambda t: -restricted_loglik(t, y, v), bounds=(0, 10 * np.var(y) + 1), method="bounded",
                                    options={"xatol": 1e-12})  # fmt: skip
    np.testing.assert_allclose(reml_tau2(y, v), best.x, rtol=1e-5, atol=1e-10)


def test_bcg_matches_metafor_published_values():
    """metafor rma(yi, vi, data=dat.bcg, test="knha"): tau^2 0.3132, estimate -0.7145, CI -1.1084 to -0.3206."""
    y, v = bcg_log_risk_ratios()
    out = random_effects(y, v)
    np.testing.assert_allclose([out["tau2"], out["mu"], out["ci_low"], out["ci_high"]], [0.3132, -0.7145, -1.1084, -0.3206], atol=6e-4)


def test_hartung_knapp_interval_equals_statsmodels_at_the_same_tau2(monkeypatch):
    """With tau^2 fixed at statsmodels' DerSimonian-Laird value, the pooled mean and Hartung-Knapp interval equal
    combine_effects(...).conf_int(use_t=True) (its random-effects WLS/HKSJ interval)."""
    y, v = bcg_log_risk_ratios()
    res = combine_effects(y, v, method_re="chi2", use_t=True)
    monkeypatch.setattr("audit.stats.meta.reml_tau2", lambda *_a, **_k: float(res.tau2))
    out = random_effects(y, v)
    np.testing.assert_allclose(out["mu"], res.mean_effect_re, rtol=1e-12)
    np.testing.assert_allclose([out["ci_low"], out["ci_high"]], res.conf_int(alpha=0.05, use_t=True)[3], rtol=1e-10)


def patients_at_sites(rng: np.random.Generator, k: int, tau: float, n: int, sd: float, mu: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    truth = mu + rng.normal(0, tau, k)
    return np.repeat(truth, n) + rng.normal(0, sd, k * n), np.repeat([f"s{i}" for i in range(k)], n)


@pytest.mark.parametrize(("k", "tau"), [(8, 0.03), (12, 0.02), (8, 0.01)], ids=["8-sites", "12-sites", "8-sites-small-tau"])
def test_prediction_interval_covers_a_new_site(k, tau):
    """A new site's true mean falls in the 95% prediction interval in >= 92% of 400 replicates (Monte Carlo SE
    0.011) with >= 8 sites, between-site SD comparable to or larger than the SE of a site mean (20 patients, SD
    0.05: SE 0.011), including a between-site SD (0.01) where REML often estimates tau^2 = 0 and Riley's interval
    alone covered 0.86. Site summaries are computed in numpy for all replicates, then the real random_effects;
    new_site_table is checked to give the same interval on the first replicates."""
    rng = np.random.default_rng(k)
    reps, n = 400, 20
    truth = 0.85 + rng.normal(0, tau, (reps, k))
    values = truth[:, :, None] + rng.normal(0, 0.05, (reps, k, n))
    means, v = values.mean(axis=2), values.var(axis=2, ddof=1) / n
    new = 0.85 + rng.normal(0, tau, reps)
    covered = 0
    for r in range(reps):
        out = random_effects(means[r], v[r])
        covered += out["pi_low"] <= new[r] <= out["pi_high"]
        if r < 3:
            table, _ = new_site_table(values[r].reshape(-1, 1), np.repeat([f"s{i:02d}" for i in range(k)], n), [("disc", "dice")], level=0.95)
            np.testing.assert_allclose(table[["pi_low", "pi_high"]].iloc[0], [out["pi_low"], out["pi_high"]], rtol=1e-12)
    assert covered / reps >= 0.92, covered / reps


def test_logit_scale_keeps_the_interval_inside_the_unit_range_and_few_sites_give_none():
    rng = np.random.default_rng(1)
    values, sites = patients_at_sites(rng, 4, 0.08, 10, 0.05, mu=0.9)
    table, _ = new_site_table(np.clip(values, 0, 0.999)[:, None], sites, [("disc", "dice")], level=0.95, scales={"dice": "logit"})
    row = table.iloc[0]
    assert row["scale"] == "logit" and 0 < row["pi_low"] < row["ci_low"] < row["pooled_mean"] < row["ci_high"] < row["pi_high"] < 1
    two, notes = new_site_table(values[:20, None], sites[:20], [("disc", "dice")], level=0.95)
    assert two["n_sites"].iloc[0] == 2 and np.isnan(two["pi_low"].iloc[0]) and any("at least 3" in n for n in notes)


def test_new_site_scope_in_acceptance_and_protocol():
    rng = np.random.default_rng(2)
    values, sites = patients_at_sites(rng, 8, 0.03, 12, 0.04)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(values.size)], "patient_id": [f"c{i}" for i in range(values.size)], "site": sites,
                          "vendor": "A", "structure": "vertebral_body", "metric": "dice", "value": values, "status": "ok"})  # fmt: skip
    crit = (AcceptanceCriterion(id="new", metric="dice", threshold=0.7, scope="new_site"),
            AcceptanceCriterion(id="strict", metric="dice", threshold=0.84, scope="new_site"))  # fmt: skip
    res = analyze(table, structures=("vertebral_body",), metrics=("dice",), higher_is_better={"dice": True}, subgroups=vendor_axis(),
                  statistics=settings(), acceptance=crit)  # fmt: skip
    meta = res.new_site.iloc[0]
    rows = res.acceptance.set_index("id")
    assert rows.loc["new", "value"] == pytest.approx(meta["pi_low"]) and rows.loc["new", "population"] == "a new site"
    assert res.criteria == {"new": "pass", "strict": "fail"}  # the prediction interval is much wider than the CI of the mean
    assert meta["ci_low"] > meta["pi_low"] and meta["pi_high"] > meta["ci_high"]
    base = {"name": "x", "version": "1", "model": {"kind": "predictions"}, "structures": ["vertebral_body"], "synthetic_cohort": {}}
    with pytest.raises(ProtocolError, match="estimate: scope 'new_site' judges the mean"):
        protocol_from_dict({**base, "acceptance": [{"id": "a", "metric": "dice", "threshold": 0.1, "scope": "new_site", "estimate": "median"}]})
    protocol_from_dict({**base, "acceptance": [{"id": "a", "metric": "dice", "threshold": 0.1, "scope": "new_site"}]})
