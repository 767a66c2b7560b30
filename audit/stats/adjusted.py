"""Adjusted analysis: a mixed model of a case-level metric on several factors at once.

``value ~ vendor + field_strength + age_years + sex + race`` with a random intercept per site and, where
patients have repeated exams, a patient variance component nested in site (REML). The fit is the dedicated
nested REML solver (:mod:`audit.stats.nested_lmm`, O(n) per likelihood evaluation; equal to statsmodels MixedLM
within the tolerances its tests state); statsmodels MixedLM fits when that solver does not converge.
Categorical factors use the largest level as reference; ``Unknown`` is kept as a level of its own. For
bounded metrics (Dice, IoU, NSD) a second fit on the logit scale is reported, for other (skewed) metrics a
rank-based fit on rank-inverse-normal scores.

Before every fit the design is checked against the site indicators (:mod:`audit.stats.identify`): a level seen at
a single site is confounded with that site, and site-level terms (constant within site) need between-site degrees
of freedom; both are shown as ``not identifiable`` with no estimate, and the model keeps the other terms. Identified site-level terms
use Student-t with the between-site degrees of freedom. After the fit, a REML log-likelihood that is flat in the
site variance makes the site-level terms not identifiable as well. With fewer than three sites (or when the
mixed model cannot be fitted) OLS with site as a fixed effect is used: HC3 standard errors without repeated
exams, CR2 patient-clustered ones with them (none below ``MIN_CLUSTERS`` patients), and said so. statsmodels'
warnings become plain sentences in the results' warnings and in the ``note`` column, never raised.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import patsy
import statsmodels.formula.api as smf
from scipy import stats

from audit.protocol import AdjustedModelSettings
from audit.records import EVALUABLE_STATUSES
from audit.stats.identify import (
    SITE_VARIANCE_RATIOS,
    between_site_df,
    flat_profile,
    flat_site_variance,
    single_site_indicators,
    site_level_design_columns,
)
from audit.stats.nested_lmm import fit_nested_reml, reml_loglik
from audit.stats.site_ols import site_fixed_effect_ols

logger = logging.getLogger(__name__)

__all__ = ["adjusted_effects", "ADJUSTED_COLUMNS", "confounding_warnings"]

ADJUSTED_COLUMNS = ("metric", "structure", "model", "term", "estimate", "se", "ci_low", "ci_high", "p_value", "df", "unit", "status", "note",
                    "n_obs", "n_groups")  # fmt: skip
NUMERIC_FACTORS = ("age_years", "field_strength_t")
_EPS = 1e-3
_SPARSE_FROM = 150  # patients in the largest site above which the patient design is sparse


def confounding_warnings(df: pd.DataFrame, factors: Sequence[str], groups: str) -> list[str]:
    """Warn when a categorical factor is confounded with the grouping (site).

    Fully nested: every group has a single level of the factor. Partly nested: some levels occur in a
    single group only, so their effect is not separable from that group's random intercept.
    """
    out = []
    for f in factors:
        if f in NUMERIC_FACTORS or f not in df or df[f].nunique() < 2:
            continue
        levels_per_group = df.groupby(groups)[f].nunique()
        if (levels_per_group <= 1).all():
            out.append(
                f"{f} is nested in {groups}: every {groups} has a single {f}, so its adjusted effect is not separable from "
                f"the {groups} effect (estimated only from between-{groups} differences, under the random-intercept assumption)"
            )
            continue
        groups_per_level = df.groupby(f)[groups].agg(["nunique", "first"])
        lonely = groups_per_level[groups_per_level["nunique"] == 1]
        if len(lonely):
            where = ", ".join(f"{lvl} (only at {g})" for lvl, g in lonely["first"].items())
            out.append(f"{f} is nested in {groups} for level(s) {where}: those effects are confounded with their {groups}")
    return out


def _rank_normal(y: pd.Series) -> np.ndarray:
    """Rank-based inverse normal scores (Blom): ``Phi^-1((rank - 3/8) / (n + 1/4))``, ties averaged."""
    ranks = stats.rankdata(y.to_numpy(dtype=float))
    return stats.norm.ppf((ranks - 0.375) / (ranks.size + 0.25))


def _term_label(term: str, references: Mapping[str, str]) -> str:
    match = re.match(r"C\((\w+), Treatment\(reference=.*\)\)\[T\.(.*)\]$", term)
    if match:
        factor, level = match.groups()
        return f"{factor}: {level} vs {references[factor]}"
    if term in NUMERIC_FACTORS:
        return f"{term} (per unit)"
    return term


def _design(df: pd.DataFrame, factors: list[str], notes: list[str]) -> tuple[str, dict[str, str], list[str]]:
    references: dict[str, str] = {}
    parts: list[str] = []
    kept: list[str] = []
    for f in factors:
        if f in NUMERIC_FACTORS:
            parts.append(f)
        else:
            ref = str(df[f].value_counts().idxmax())
            references[f] = ref
            parts.append(f"C({f}, Treatment(reference={ref!r}))")
        kept.append(f)
        rhs = " + ".join(parts)
        matrix = patsy.dmatrix(rhs, df, return_type="dataframe")
        if np.linalg.matrix_rank(matrix.to_numpy()) < matrix.shape[1]:
            notes.append(f"{f} dropped from the adjusted model: it is collinear with {kept[:-1]} in these data")
            parts.pop()
            kept.pop()
            references.pop(f, None)
    return " + ".join(parts) or "1", references, kept


_PLAIN = {
    "ConvergenceWarning": "the fit did not fully converge: treat these estimates with caution",
    "HessianInversionWarning": "the information matrix could not be inverted: standard errors may be unreliable",
}
_BOUNDARY_NOTE = "a variance component is estimated at its boundary (0)"
_SINGULAR_NOTE = "a variance estimate sits at the edge of its range (singular covariance): standard errors may be unreliable"
#: statsmodels' rule for its boundary warning: a variance (outcome scale, not relative) below this
_SM_BOUNDARY = 0.01


def _plain_messages(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """statsmodels' warnings as one plain sentence per kind (the library text is not shown)."""
    out = []
    for w in caught:
        name = type(w.message).__name__
        text = str(w.message)
        if "boundary" in text:
            out.append(_BOUNDARY_NOTE)
        elif "not positive definite" in text or "singular" in text.lower():
            out.append(_SINGULAR_NOTE)
        elif name in _PLAIN:
            out.append(_PLAIN[name])
        elif name != "RuntimeWarning":
            out.append(f"numerical note from the fitting library ({name})")
    return list(dict.fromkeys(out))


def _design_frame(df: pd.DataFrame, rhs: str) -> pd.DataFrame:
    """The fixed-effect design matrix (patsy) with the intercept, rows aligned with ``df``."""
    return patsy.dmatrix(rhs, df, return_type="dataframe").set_index(df.index)


def _identified(
    df: pd.DataFrame, design: pd.DataFrame, groups: str, notes: list[str]
) -> tuple[pd.DataFrame, list[str], dict[str, str], int, bool]:
    """Check the design against the site indicators before a fit.

    Returns the design to fit, the site-level columns kept, the columns left out with the reason, the
    between-site degrees of freedom and whether a random site intercept can be fitted.
    """
    sites = df[groups].to_numpy()
    n_sites = int(pd.unique(sites).size)
    site_cols = site_level_design_columns(design, sites)
    dropped: dict[str, str] = {}
    if n_sites >= 3:
        lonely = single_site_indicators(design, sites, site_cols)
        for c, site in lonely.items():
            dropped[c] = f"not identifiable: this level occurs at a single {groups} ({site}), so its effect is confounded with that {groups}"
        if lonely:
            notes.append(f"{len(lonely)} site-level level(s) occur at a single {groups} and are shown without estimates (confounded with site)")
            design = design.drop(columns=list(lonely))
            site_cols = [c for c in site_cols if c not in lonely]
        bdf = between_site_df(design, sites, site_cols)
        if site_cols and bdf < 1:
            for c in site_cols:
                dropped[c] = (f"not identifiable: with {n_sites} sites the site-level terms and the intercept leave no between-site "
                              f"degrees of freedom (the site variance and these effects are not separable)")  # fmt: skip
            notes.append(f"site-level terms ({len(site_cols)} design column(s)) are not identifiable with {n_sites} sites and are shown without "
                         f"estimates; the model keeps the patient-level terms and the random {groups} intercept")  # fmt: skip
            return design.drop(columns=site_cols), [], dropped, 0, True
        return design, site_cols, dropped, bdf, True
    # one or two sites: a fixed site effect (two sites) absorbs every site-level column
    for c in site_cols:
        dropped[c] = f"not identifiable: with {n_sites} sites a site-level effect is the difference between the sites"
    return design.drop(columns=site_cols), [], dropped, 0, False


def _fit(df: pd.DataFrame, design: pd.DataFrame, groups: str, level: float, *, mixed: bool,
         site_cols: Sequence[str], between_df: int) -> tuple[str, pd.DataFrame, int, list[str]]:  # fmt: skip
    """Fit the mixed model (or OLS with site fixed effects and small-sample robust standard errors).

    Returns the model kind, the coefficient table (term, estimate, se, ci_low, ci_high, p_value, df, unit),
    the number of sites and the plain warnings of this fit.
    """
    n_groups = int(df[groups].nunique())
    repeats = bool(df["patient_id"].duplicated().any())
    safe = {c: f"_x{i}" for i, c in enumerate(design.columns)}
    data = pd.concat([df[["_y", groups, "patient_id"]], design.rename(columns=safe)], axis=1)
    formula = "_y ~ 0 + " + " + ".join(safe.values())
    fit_notes: list[str] = []
    kind = "mixedlm"
    fast = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if not mixed:
                raise np.linalg.LinAlgError(f"only {n_groups} {groups}(s): a random {groups} intercept cannot be estimated")
            fast = _nested_fit(data, design, groups, repeats)
            if fast is not None:
                result, flat, span, fast_messages = fast
            else:
                result, flat, span = _statsmodels_fit(data, formula, groups, repeats)
            estimate = np.asarray(result.fe_params, dtype=float)
            se = np.asarray(result.bse_fe, dtype=float)
        except (np.linalg.LinAlgError, ValueError) as exc:
            kind = "ols"
            table, ols_note = site_fixed_effect_ols(data, design, groups, repeats, exc, level)
            fit_notes.append(ols_note)
        messages = _plain_messages(caught)
    if kind == "mixedlm" and fast is not None:
        messages = list(dict.fromkeys([*fast_messages, *messages]))
    if kind == "mixedlm":
        if messages and any("boundary" in m or "singular" in m for m in messages):
            zero = _zero_variances(result, groups)
            if zero:  # a variance at 0 explains the boundary and singular-covariance messages: say it once, plainly
                fit_notes.append(
                    f"the {' and '.join(zero)} variance is estimated at or near 0 (below 1% of the residual variance, at the "
                    f"boundary of the parameter space): those units differ little more than chance predicts"
                )
                messages = [m for m in messages if "boundary" not in m and "singular" not in m]
        z = stats.norm.ppf(0.5 + level / 2.0)
        names = list(design.columns)
        site_level = np.array([c in site_cols for c in names])
        df_col = np.where(site_level, float(between_df), np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            tstat = estimate / se
        crit = np.where(site_level, stats.t.ppf(0.5 + level / 2.0, np.maximum(df_col, 1)), z)
        p = np.where(site_level, 2 * stats.t.sf(np.abs(tstat), np.maximum(df_col, 1)), 2 * stats.norm.sf(np.abs(tstat)))
        table = pd.DataFrame({"term": names, "estimate": estimate, "se": se, "ci_low": estimate - crit * se, "ci_high": estimate + crit * se,
                              "p_value": p, "df": df_col, "unit": np.where(site_level, "site", "patient"),
                              "status": "estimated", "note": ""})  # fmt: skip
        if flat:
            fit_notes.append(f"the REML log-likelihood is flat in the {groups} variance (range {span:.2g} over a 10^6 range of that "
                             f"variance): it is not identified, so site-level terms get no estimate")  # fmt: skip
            table.loc[site_level, ["estimate", "se", "ci_low", "ci_high", "p_value"]] = np.nan
            table.loc[site_level, "status"] = "not identifiable"
            table.loc[site_level, "note"] = f"not identifiable: flat likelihood in the {groups} variance"
        elif site_level.any():
            table.loc[site_level, "note"] = f"site-level term: Student-t with {between_df} between-site degree(s) of freedom"
    fit_notes.extend(messages)
    if messages:
        table["note"] = [("; ".join(filter(None, [n, *messages]))) for n in table["note"]]
    return kind, table, n_groups, fit_notes


def _nested_fit(data: pd.DataFrame, design: pd.DataFrame, groups: str, repeats: bool):
    """The dedicated nested REML fit, its flat-likelihood check and statsmodels' warnings for the same estimates.

    Returns ``(fit, flat, span, messages)``, or None when the solver fails or does not converge (statsmodels then
    fits). The messages follow statsmodels' rules so that the notes do not depend on the solver: boundary when a
    variance is below 0.01 on the outcome scale, singular when the site variance is 0 or the patient ratio below
    1e-10, and a Hessian whose diagonal is not negative.
    """
    patients = data["patient_id"].to_numpy() if repeats else None
    try:
        fit = fit_nested_reml(data["_y"].to_numpy(dtype=float), design.to_numpy(dtype=float), data[groups].to_numpy(), patients)
    except np.linalg.LinAlgError as exc:
        logger.info("nested REML solver failed (%s); statsmodels MixedLM fits instead", exc)
        return None
    if not fit.converged:
        logger.info("nested REML solver did not converge; statsmodels MixedLM fits instead")
        return None
    with np.errstate(all="ignore"):
        flat, span = flat_profile([reml_loglik(fit.design, (ratio, *fit.ratios[1:])) for ratio in SITE_VARIANCE_RATIOS])
    messages = []
    variances = np.r_[fit.cov_re.ravel(), fit.vcomp]
    if np.min(np.abs(variances)) < _SM_BOUNDARY:
        messages.append(_BOUNDARY_NOTE)
    if fit.ratios[0] == 0.0 or (fit.ratios.size > 1 and fit.ratios[1] < 1e-10) or not fit.hessian_diagonal_ok:
        messages.append(_SINGULAR_NOTE)
    return fit, flat, span, messages


def _statsmodels_fit(data: pd.DataFrame, formula: str, groups: str, repeats: bool):
    """statsmodels MixedLM (REML, L-BFGS then Powell) and its flat-likelihood check: ``(result, flat, span)``."""
    vc = {"patient": "0 + C(patient_id)"} if repeats else None
    # re_formula="1" keeps the random site intercept: statsmodels drops it when vc_formula is given
    # alone. A sparse patient design gives identical estimates; it is 2-3x faster with hundreds of
    # patients per site and slower (overhead) with few.
    sparse = bool(repeats and data.groupby(groups)["patient_id"].nunique().max() > _SPARSE_FROM)
    model = smf.mixedlm(formula, data, groups=data[groups], re_formula="1", vc_formula=vc, use_sparse=sparse)
    result = model.fit(reml=True, method=["lbfgs", "powell"])
    flat, span = flat_site_variance(model, result)
    return result, flat, span


def _zero_variances(result, groups: str) -> list[str]:
    """Names of the random-effect variances a MixedLM fit put at or near zero (below 1% of the residual variance)."""
    tiny = 0.01 * float(result.scale)
    out = []
    if np.asarray(result.cov_re).size and float(np.asarray(result.cov_re)[0, 0]) <= tiny:
        out.append(f"{groups} (random intercept)")
    vcomp = np.atleast_1d(np.asarray(getattr(result, "vcomp", []), dtype=float))
    if vcomp.size and vcomp[0] <= tiny:
        out.append("patient")
    return out


def _merge_notes(notes: Sequence[str]) -> list[str]:
    """One line per distinct message: "adjusted model (a): m" and "adjusted model (b): m" become "adjusted model (a, b): m"."""
    merged: dict[str, list[str]] = {}
    for note in notes:
        match = re.match(r"adjusted model \((.+?)\): (.*)$", note)
        structure, message = match.groups() if match else ("", note)
        where = merged.setdefault(message, [])
        if structure and structure not in where:
            where.append(structure)
    return [f"adjusted model ({', '.join(w)}): {m}" if w else m for m, w in merged.items()]


def adjusted_effects(
    analysis: pd.DataFrame,
    *,
    settings: AdjustedModelSettings,
    structures: Sequence[str],
    bounded: Mapping[str, bool],
    level: float,
) -> tuple[pd.DataFrame, list[str]]:
    """Fit the adjusted model(s) for each structure; returns the effects table and warnings."""
    notes: list[str] = []
    rows: list[pd.DataFrame] = []
    if not settings.enabled:
        return pd.DataFrame(columns=list(ADJUSTED_COLUMNS)), notes
    targets = [settings.structure] if settings.structure else list(structures)
    for structure in targets:
        df = analysis[(analysis["metric"] == settings.metric) & (analysis["structure"] == structure)]
        df = df[df["status"].isin(EVALUABLE_STATUSES) & np.isfinite(df["value"].astype(float))].copy()
        factors = [f for f in settings.factors if f in df.columns]
        missing = sorted(set(settings.factors) - set(factors))
        if missing:
            notes.append(f"adjusted model ({structure}): factors {missing} are not in the data")
        for f in factors:
            if f in NUMERIC_FACTORS:
                df[f] = pd.to_numeric(df[f], errors="coerce")
            else:
                df[f] = df[f].astype(object).where(df[f].notna(), "Unknown").astype(str)
        numeric_missing = df[[f for f in factors if f in NUMERIC_FACTORS]].isna().any(axis=1)
        if numeric_missing.any():
            notes.append(f"adjusted model ({structure}): {int(numeric_missing.sum())} case(s) without {[f for f in factors if f in NUMERIC_FACTORS]} left out")
            df = df[~numeric_missing]
        single = [f for f in factors if df[f].nunique() < 2]
        if single:
            notes.append(f"adjusted model ({structure}): factors {single} have a single value and are dropped")
        factors = [f for f in factors if f not in single]
        if len(df) < len(factors) + 5:
            notes.append(f"adjusted model ({structure}): too few cases ({len(df)}) for {len(factors)} factors; not fitted")
            continue
        notes.extend(f"adjusted model: {w}" for w in confounding_warnings(df, factors, settings.groups))
        fit_notes: list[str] = []
        rhs, references, _ = _design(df, factors, fit_notes)
        design = _design_frame(df, rhs)
        design, site_cols, dropped, between_df, mixed = _identified(df, design, settings.groups, fit_notes)
        scales = [("", df["value"].astype(float))]
        if bounded.get(settings.metric, False):
            clipped = df["value"].astype(float).clip(_EPS, 1 - _EPS)
            scales.append(("_logit", np.log(clipped / (1 - clipped))))
        else:  # skewed (distances, volume errors): a rank-based variant robust to the tail
            scales.append(("_rank", pd.Series(_rank_normal(df["value"]), index=df.index)))
        for suffix, y in scales:
            data = df.assign(_y=y.to_numpy())
            kind, table, n_groups, notes_here = _fit(data, design, settings.groups, level, mixed=mixed, site_cols=site_cols,
                                                      between_df=between_df)  # fmt: skip
            fit_notes.extend(notes_here)
            if dropped:
                table = pd.concat([table, pd.DataFrame({"term": list(dropped), "estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                                                        "p_value": np.nan, "df": np.nan, "unit": "site", "status": "not identifiable",
                                                        "note": list(dropped.values())})], ignore_index=True)  # fmt: skip
            table["term"] = [_term_label(t, references) for t in table["term"]]
            table.insert(0, "model", kind + suffix)
            table.insert(0, "structure", structure)
            table.insert(0, "metric", settings.metric)
            table["n_obs"] = len(data)
            table["n_groups"] = n_groups
            rows.append(table)
        notes.extend(f"adjusted model ({structure}): {n}" for n in dict.fromkeys(fit_notes))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(ADJUSTED_COLUMNS))
    return out.reindex(columns=list(ADJUSTED_COLUMNS)), _merge_notes(notes)
