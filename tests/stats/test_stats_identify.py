"""Identifiability before adjusted fits: site-level terms spanning the site indicators, flat likelihoods,
t inference with between-site degrees of freedom, HC3 with one site and CR2 with few clusters."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import linalg
from scipy import stats as sps
from stats_builders import settings, vendor_axis

from audit.protocol import AdjustedModelSettings
from audit.stats import analyze
from audit.stats.identify import MIN_CLUSTERS, between_site_df, cr2_covariance, flat_site_variance, site_level_design_columns

VB = "vertebral_body"


def demo_like_sites(*, seed: int = 0, per_site: int = 15, sites: dict[str, tuple[str, str]] | None = None, site_sd: float = 0.05,
                    repeats: bool = False) -> pd.DataFrame:  # fmt: skip
    """Sites with a vendor and a field strength each (the demo: 4 sites, vendor + field strength span the sites),
    sex crossed within sites, a site effect of SD ``site_sd``, no vendor effect."""
    sites = sites or {"A": ("Siemens", "3T"), "B": ("Siemens", "1.5T"), "C": ("GE", "3T"), "D": ("Philips", "1.5T")}
    rng = np.random.default_rng(seed)
    rows = []
    for site, (vendor, field) in sites.items():
        effect = rng.normal(0, site_sd)
        for p in range(per_site):
            for e in range(2 if repeats and p % 3 == 0 else 1):
                rows.append(dict(case_id=f"{site}-{p}-{e}", patient_id=f"{site}-{p}", site=site, vendor=vendor, field_strength=field,
                                 sex="F" if p % 2 else "M", age_years=30.0 + p, structure=VB, metric="dice", status="ok",
                                 value=0.85 + effect - 0.01 * (p % 2) + rng.normal(0, 0.03)))  # fmt: skip
    return pd.DataFrame(rows)


def adjusted(table: pd.DataFrame, factors=("vendor", "field_strength", "sex")):
    am = AdjustedModelSettings(enabled=True, factors=factors)
    res = analyze(table, structures=(VB,), metrics=("dice",), higher_is_better={"dice": True}, subgroups=vendor_axis(), statistics=settings(adjusted_model=am))
    out = res.adjusted[res.adjusted["model"].isin(["mixedlm", "ols"])].set_index("term")
    return out.rename(index=lambda t: "sex" if t.startswith("sex:") else t), res.warnings


def test_design_columns_in_the_span_of_the_site_indicators():
    table = demo_like_sites()
    design = pd.get_dummies(table[["vendor", "field_strength", "sex"]], drop_first=True, dtype=float).assign(Intercept=1.0)
    cols = site_level_design_columns(design, table["site"].to_numpy())
    assert sorted(cols) == ["field_strength_3T", "vendor_Philips", "vendor_Siemens"]  # sex varies within sites
    assert between_site_df(design, table["site"].to_numpy(), cols) == 0  # 4 sites, rank 4 with the intercept


def test_levels_at_a_single_site_are_confounded_and_get_no_estimate():
    """The demo's design: GE and Philips each at one site are confounded with it (no estimate); field strength
    (1.5 T at two sites) is identified from 4 - 2 = 2 between-site degrees of freedom. Issue 12: the Philips p-value
    ran from 6e-65 to 0.06 along a flat likelihood."""
    table, notes = adjusted(demo_like_sites(seed=1))
    for term in ("vendor: GE vs Siemens", "vendor: Philips vs Siemens"):
        assert table.loc[term, "status"] == "not identifiable" and np.isnan(table.loc[term, ["estimate", "p_value"]].astype(float)).all()
        assert "single site" in table.loc[term, "note"]
    field = table.loc["field_strength: 3T vs 1.5T"] if "field_strength: 3T vs 1.5T" in table.index else table.loc["field_strength: 1.5T vs 3T"]
    assert field["status"] == "estimated" and field["df"] == 2 and field["unit"] == "site"
    assert table.loc["sex", "status"] == "estimated" and np.isfinite(table.loc["sex", "p_value"])
    assert any("occur at a single site" in n for n in notes)
    assert not any("Warning:" in n for n in notes)  # plain sentences, never the library's warning text


def test_site_level_terms_spanning_the_sites_are_not_identifiable_and_have_no_estimate():
    """4 sites, each vendor and field strength at two sites, plus a numeric field strength: [intercept, vendor,
    field strength, field strength in T] span the 4 sites (no between-site degree of freedom left)."""
    sites = {"s1": ("A", "3T"), "s2": ("A", "1.5T"), "s3": ("B", "3T"), "s4": ("B", "1.5T")}
    frame = demo_like_sites(seed=8, sites=sites)
    frame["field_strength_t"] = frame["site"].map({"s1": 3.0, "s2": 1.5, "s3": 2.9, "s4": 1.0})
    table, notes = adjusted(frame, factors=("vendor", "field_strength", "field_strength_t", "sex"))
    site_terms = [t for t in table.index if t.startswith(("vendor", "field_strength"))]
    assert len(site_terms) == 3
    assert (table.loc[site_terms, "status"] == "not identifiable").all() and table.loc[site_terms, ["estimate", "p_value"]].isna().all().all()
    assert table.loc["sex", "status"] == "estimated" and np.isfinite(table.loc["sex", "p_value"])
    assert any("not identifiable with 4 sites" in n for n in notes)


def test_flat_likelihood_is_detected_on_the_unidentified_fit():
    """The statsmodels fit that keeps the spanning site-level terms has a flat REML likelihood in the site variance;
    a fit with 10 sites and a real site effect does not."""
    table = demo_like_sites(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smf.mixedlm("value ~ C(vendor) + C(field_strength) + C(sex)", table, groups=table["site"])
        flat, span = flat_site_variance(model, model.fit(reml=True))
        many = demo_like_sites(seed=3, sites={f"s{i}": ("GE", "3T") for i in range(10)})
        model2 = smf.mixedlm("value ~ C(sex)", many, groups=many["site"])
        flat2, span2 = flat_site_variance(model2, model2.fit(reml=True))
    assert flat and span < 0.5 and not flat2 and span2 > 5


def test_identified_site_level_term_uses_t_with_between_site_df():
    """8 sites, 4 per vendor: the vendor effect is identified from 8 - 2 = 6 between-site degrees of freedom."""
    sites = {f"s{i}": ("GE" if i < 4 else "Siemens", "3T") for i in range(8)}
    table, notes = adjusted(demo_like_sites(seed=4, sites=sites, site_sd=0.03), factors=("vendor", "sex"))
    row = table.loc["vendor: Siemens vs GE"]
    assert row["unit"] == "site" and row["df"] == 6 and row["status"] == "estimated"
    np.testing.assert_allclose(row["p_value"], 2 * sps.t.sf(abs(row["estimate"] / row["se"]), 6), rtol=1e-12)
    np.testing.assert_allclose(row["ci_high"] - row["estimate"], sps.t.ppf(0.975, 6) * row["se"], rtol=1e-12)
    assert table.loc["sex", "unit"] == "patient"


def test_one_site_uses_hc3_not_clusters_of_one_patient():
    """Issue 12: one site, one exam per patient, cluster-robust SEs gave p = 1.5e-29 from 9 cases; HC3 is used."""
    table = demo_like_sites(seed=5, sites={"only": ("GE", "3T")}, per_site=9)
    out, notes = adjusted(table, factors=("sex", "age_years"))
    y = table["value"].to_numpy()
    x = sm.add_constant(pd.DataFrame({"sex": (table["sex"] == "F").astype(float), "age": table["age_years"]}))  # 5 M, 4 F: M is the reference
    oracle = sm.OLS(y, x).fit(cov_type="HC3", use_t=True)
    np.testing.assert_allclose(out.loc["sex", ["estimate", "p_value"]].astype(float), [oracle.params["sex"], oracle.pvalues["sex"]], rtol=1e-8)
    assert any("HC3" in n for n in notes)


def test_cr2_equals_hc2_for_singletons_and_the_formula_written_out_for_clusters():
    rng = np.random.default_rng(6)
    x = sm.add_constant(rng.normal(size=(24, 2)))
    y = x @ [1.0, 0.5, -0.2] + rng.normal(size=24)
    fit = sm.OLS(y, x).fit(cov_type="HC2")
    np.testing.assert_allclose(cr2_covariance(x, y - x @ fit.params, np.arange(24)), fit.cov_params(), rtol=1e-10)
    clusters = np.repeat(np.arange(8), 3)
    e = y - x @ fit.params
    bread = np.linalg.inv(x.T @ x)
    meat = np.zeros((3, 3))
    for g in range(8):  # Bell and McCaffrey (2002): A_g = (I - H_gg)^(-1/2), by scipy's matrix square root
        idx = clusters == g
        a = linalg.inv(linalg.sqrtm(np.eye(3) - x[idx] @ bread @ x[idx].T)).real
        u = x[idx].T @ a @ e[idx]
        meat += np.outer(u, u)
    np.testing.assert_allclose(cr2_covariance(x, e, clusters), bread @ meat @ bread, rtol=1e-8)


def test_two_sites_with_repeated_exams_use_site_fixed_effect_and_cr2_or_refuse_below_the_minimum():
    table = demo_like_sites(seed=7, sites={"a": ("GE", "3T"), "b": ("Siemens", "3T")}, repeats=True)
    out, notes = adjusted(table, factors=("vendor", "sex"))
    assert out.loc["vendor: Siemens vs GE", "status"] == "not identifiable"  # two sites: a vendor effect is the site difference
    patients = table["patient_id"].nunique()
    assert patients >= MIN_CLUSTERS and out.loc["sex", "df"] == patients - 1 and any("CR2" in n for n in notes)
    few = table[table["patient_id"].isin(table["patient_id"].unique()[:8])]  # 8 patients (clusters) < MIN_CLUSTERS
    out_few, notes_few = adjusted(few, factors=("sex",))
    assert np.isnan(out_few.loc["sex", ["se", "p_value"]].astype(float)).all() and np.isfinite(out_few.loc["sex", "estimate"])
    assert any(f"fewer than {MIN_CLUSTERS}" in n for n in notes_few)
