"""Flags shown beside the numbers they concern: site-level axes (confounded with site) and adjusted-model terms
(confounded with site, non-identifiable, not converged).

Everything is derived from the cases (metric table joined with the manifest) and results.json; nothing here
changes a number, it only says how far a number can be read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["adjusted_flags", "site_description", "site_level_axes"]

#: A convergence warning of one model kind for some structures; "MLE on the boundary" (a variance at 0) is not one.
_CONVERGENCE = re.compile(r"adjusted model \(([^)]*)\): (\w+): ConvergenceWarning: (?!The MLE may be on the boundary)")


def site_level_axes(cases: pd.DataFrame, axes: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """For each axis constant within every site (vendor, field strength, ...): group -> the sites it occurs at.

    Examples
    --------
    >>> c = pd.DataFrame({"site": ["A", "A", "B"], "vendor": ["GE", "GE", "Philips"], "sex": ["F", "M", "F"]})
    >>> site_level_axes(c, ["vendor", "sex"])
    {'vendor': {'GE': ['A'], 'Philips': ['B']}}
    """
    out = {}
    one = cases.drop_duplicates("case_id") if "case_id" in cases else cases
    for axis in axes:
        if axis == "site" or axis not in one or " x " in axis:
            continue
        values = one[[axis, "site"]].astype(str)
        if (values.groupby("site")[axis].nunique() <= 1).all() and values[axis].nunique() > 1:
            out[axis] = {g: sorted(sub["site"].unique()) for g, sub in values.groupby(axis)}
    return out


def site_description(cases: pd.DataFrame, site: str, columns: Sequence[str] = ("vendor", "field_strength")) -> str:
    """``Philips 1.5T`` for a site with a single vendor and field strength; the empty string otherwise."""
    sub = cases.loc[cases["site"].astype(str) == site]
    parts = [str(sub[c].iloc[0]) for c in columns if c in sub and sub[c].nunique() == 1 and len(sub)]
    return " ".join(p for p in parts if p not in ("Unknown", "nan"))


def _factor(term: str) -> str:
    return term.split(":", 1)[0].split(" (", 1)[0].strip()


def adjusted_flags(rows: Sequence[Mapping[str, Any]], cases: pd.DataFrame, warnings: Sequence[str], groups: str = "site") -> list[list[str]]:
    """Flags for each row of ``statistics.adjusted`` (same order).

    * ``confounded with site``: the term's factor is constant within every site, or its level occurs at one site;
    * ``non-identifiable``: the site-level terms (with the intercept) span as many dimensions as there are sites, so
      the site variance and those effects cannot be told apart; also any term without a finite estimate or interval;
    * ``not converged``: the fit of that model and structure raised a ConvergenceWarning (``statistics.warnings``).
      Rows may also carry their own ``flag``/``identifiable``/``converged`` fields, which are honoured.
    """
    one = cases.drop_duplicates("case_id") if "case_id" in cases else cases
    unconverged = {(s.strip(), m) for w in warnings for structures, m in _CONVERGENCE.findall(w) for s in structures.split(",")}
    site_level: dict[str, bool] = {}
    lonely: dict[str, set[str]] = {}
    for row in rows:
        factor = _factor(str(row.get("term", "")))
        if factor in site_level or factor not in one or factor == "Intercept" or groups not in one:
            continue
        values = one[[factor, groups]].dropna().astype(str)
        site_level[factor] = bool((values.groupby(groups)[factor].nunique() <= 1).all()) and values[factor].nunique() > 1
        per_level = values.groupby(factor)[groups].nunique()
        lonely[factor] = set(per_level[per_level == 1].index)
    spanned = _site_terms_span_sites(one, [f for f, v in site_level.items() if v], groups)
    out = []
    for row in rows:
        term = str(row.get("term", ""))
        factor, flags = _factor(term), []
        level = term.split(":", 1)[1].split(" vs ", 1)[0].strip() if ":" in term else None
        if site_level.get(factor) or (level is not None and level in lonely.get(factor, set())):
            flags.append("confounded with site")
        finite = all(isinstance(row.get(k), (int, float)) and np.isfinite(row[k]) for k in ("estimate", "ci_low", "ci_high"))
        if (site_level.get(factor) and spanned) or not finite or row.get("identifiable") is False or row.get("status") == "not identifiable":
            flags.append("non-identifiable")
        if (str(row.get("structure")), str(row.get("model"))) in unconverged or row.get("converged") is False:
            flags.append("not converged")
        if row.get("flag"):
            flags.append(str(row["flag"]))
        out.append(list(dict.fromkeys(flags)))
    return out


def _site_terms_span_sites(cases: pd.DataFrame, factors: Sequence[str], groups: str) -> bool:
    """True when intercept + dummies of the site-level factors have rank equal to the number of sites."""
    if not factors:
        return False
    sites = cases.drop_duplicates(groups).set_index(groups)[list(factors)].astype(str)
    design = pd.get_dummies(sites, drop_first=True).astype(float)
    design.insert(0, "intercept", 1.0)
    return int(np.linalg.matrix_rank(design.to_numpy())) >= len(sites)
