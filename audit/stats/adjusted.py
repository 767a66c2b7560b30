"""Adjusted analysis: a mixed model of a case-level metric on several factors at once.

``value ~ vendor + field_strength + age_years + sex + race`` with a random intercept per site and, where
patients have repeated exams, a patient variance component nested in site (statsmodels MixedLM, REML).
Categorical factors use the largest level as reference; ``Unknown`` is kept as a level of its own. For
bounded metrics (Dice, IoU, NSD) a second fit on the logit scale is reported, for other (skewed) metrics a
rank-based fit on rank-inverse-normal scores. Confounding with site (a factor, or some of its levels, occurring
at a single site) is named in a warning. With fewer than three sites
the random site intercept cannot be estimated: OLS with patient-clustered standard errors is used instead,
and said so. Every statsmodels warning is captured into the result's warnings, never raised.
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

logger = logging.getLogger(__name__)

__all__ = ["adjusted_effects", "ADJUSTED_COLUMNS", "confounding_warnings"]

ADJUSTED_COLUMNS = ("metric", "structure", "model", "term", "estimate", "ci_low", "ci_high", "p_value", "n_obs", "n_groups")
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


def _fit(df: pd.DataFrame, formula: str, groups: str, level: float, notes: list[str]) -> tuple[str, pd.DataFrame, int]:
    n_groups = df[groups].nunique()
    repeats = df["patient_id"].duplicated().any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if n_groups >= 3:
                vc = {"patient": "0 + C(patient_id)"} if repeats else None
                # re_formula="1" keeps the random site intercept: statsmodels drops it when vc_formula is given
                # alone. A sparse patient design gives identical estimates; it is 2-3x faster with hundreds of
                # patients per site and slower (overhead) with few.
                sparse = bool(repeats and df.groupby(groups)["patient_id"].nunique().max() > _SPARSE_FROM)
                model = smf.mixedlm(formula, df, groups=df[groups], re_formula="1", vc_formula=vc, use_sparse=sparse)
                result = model.fit(reml=True, method=["lbfgs", "powell"])
                kind = "mixedlm"
                names = [n for n in result.fe_params.index]
            else:
                raise np.linalg.LinAlgError(f"only {n_groups} {groups}(s): a random {groups} intercept cannot be estimated")
        except (np.linalg.LinAlgError, ValueError) as exc:
            notes.append(f"mixed model not fitted ({exc}); OLS with patient-clustered standard errors instead")
            codes = pd.factorize(df["patient_id"])[0]
            result = smf.ols(formula, df).fit(cov_type="cluster", cov_kwds={"groups": codes})
            kind = "ols_cluster"
            names = list(result.params.index)
        ci = result.conf_int(alpha=1.0 - level)  # standard errors are computed lazily: inside the capture
        table = pd.DataFrame(
            {"term": names, "estimate": result.params[names].to_numpy(), "ci_low": ci.loc[names, 0].to_numpy(),
             "ci_high": ci.loc[names, 1].to_numpy(), "p_value": result.pvalues[names].to_numpy()}
        )  # fmt: skip
    messages = [f"{type(w.message).__name__}: {w.message}" for w in caught]
    if kind == "mixedlm" and any(("boundary" in m) or ("singular" in m) for m in messages):
        zero = _zero_variances(result, groups)
        if zero:  # a variance at 0 explains the boundary, singular-covariance and log(0) messages: say it once, plainly
            notes.append(
                f"{kind}: the {' and '.join(zero)} variance is estimated at or near 0 (below 1% of the residual variance, at the "
                f"boundary of the parameter space): those units differ little more than chance predicts"
            )
            messages = [m for m in messages if not m.startswith(("RuntimeWarning", "SingularMatrixWarning")) and "boundary" not in m]
    notes.extend(f"{kind}: {m}" for m in messages)
    return kind, table, int(n_groups)


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
        scales = [("", df["value"].astype(float))]
        if bounded.get(settings.metric, False):
            clipped = df["value"].astype(float).clip(_EPS, 1 - _EPS)
            scales.append(("_logit", np.log(clipped / (1 - clipped))))
        else:  # skewed (distances, volume errors): a rank-based variant robust to the tail
            scales.append(("_rank", pd.Series(_rank_normal(df["value"]), index=df.index)))
        for suffix, y in scales:
            data = df.assign(_y=y.to_numpy())
            kind, table, n_groups = _fit(data, f"_y ~ {rhs}", settings.groups, level, fit_notes)
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
