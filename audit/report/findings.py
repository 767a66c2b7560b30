"""Key findings in plain language: sentences generated from results.json with the estimate, its interval, the
population it describes and the direction.

A sentence is a tuple of parts: plain text or a :class:`Ref` to one number of results.json (source list, row,
field, format kind and an optional scale, e.g. 10 for an age slope per decade or -1 to print a decrease as a
positive "lower"). The template renders every :class:`Ref` as a tagged number, so the tests check each number
of a sentence against results.json like every table cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pandas as pd

from audit.report.flags import site_description, site_level_axes
from audit.report.labels import axis_label, metric_label, structure_label, readable_test
from audit.study import SITE_ROLE

__all__ = ["Ref", "Sentence", "key_findings"]


@dataclasses.dataclass(frozen=True)
class Ref:
    """One number of results.json: ``source`` list (dotted path), ``row`` index (None for a mapping), ``field``."""

    source: str
    row: int | None
    field: str
    kind: str
    scale: float | None = None


Sentence = tuple[str | Ref, ...]


def _interval(source: str, row: int, low: str, high: str, kind: str, scale: float | None, level: int) -> tuple[str | Ref, ...]:
    lo, hi = (low, high) if scale is None or scale > 0 else (high, low)  # a negative scale swaps the bounds
    return (f" ({level}% CI ", Ref(source, row, lo, kind, scale), " to ", Ref(source, row, hi, kind, scale), ")")


def _direction(difference: float, higher_is_better: bool) -> tuple[str, float | None]:
    """Words and scale for a difference (group - reference): ``0.27 lower (worse)`` rather than ``-0.27``."""
    worse = difference < 0 if higher_is_better else difference > 0
    word = "lower" if difference < 0 else "higher"
    return f" {word} ({'worse' if worse else 'better'})", (-1.0 if difference < 0 else None)


def key_findings(results: Mapping[str, Any], cases: pd.DataFrame, *, primary: str) -> list[Sentence]:
    """The key findings, most important first (see the module docstring for the sentence format)."""
    stats = results["statistics"]
    definitions = results["metrics"]["definitions"]
    higher = bool(definitions.get(primary, {}).get("higher_is_better", True))
    label = metric_label(primary, definitions)
    level = round(100 * float(stats.get("settings", {}).get("confidence_level", 0.95)))
    out: list[Sentence] = [_population(results)]
    overlap = (results.get("study") or {}).get("overlap")
    if overlap:
        out.append(_overlap_sentence(overlap))
    overall = [(i, r) for i, r in enumerate(stats["overall"]) if r["metric"] == primary]
    if overall:
        parts: list[str | Ref] = [f"Mean {label} over all sites: "]
        for k, (i, r) in enumerate(overall):
            parts += [f"{structure_label(r['structure'])} ", Ref("statistics.overall", i, "mean", primary),
                      *_interval("statistics.overall", i, "ci_low", "ci_high", primary, None, level), "; " if k < len(overall) - 1 else "."]  # fmt: skip
        out.append(tuple(parts))
    gaps = [(i, r) for i, r in enumerate(stats["gaps"]) if r["metric"] == primary and r["comparison"] == "vs_reference" and " x " not in r["axis"]]
    axes = sorted(dict.fromkeys(r["axis"] for _, r in gaps), key=lambda a: a != SITE_ROLE)  # external versus training sites first
    confounded = site_level_axes(cases, axes)
    for axis in axes:
        rows = [(i, r) for i, r in gaps if r["axis"] == axis and isinstance(r.get("difference"), (int, float))]
        if not rows:
            continue
        i, r = max(rows, key=lambda t: (bool(t[1].get("significant")), t[1].get("p_value") is not None, abs(t[1]["difference"])))
        out.append(_gap_sentence(i, r, axis, label, higher, level, confounded.get(axis), cases, stats))
    out += _age_sentences(stats, primary, label, level)
    return out


def _population(results: Mapping[str, Any]) -> Sentence:
    flow = (results.get("cohort") or {}).get("flow") or []
    total = next((i for i, r in enumerate(flow) if r["site"] == "all"), None)
    parts: list[str | Ref] = ["Population: ", Ref("data", None, "n_cases", "count"), " cases of ", Ref("data", None, "n_patients", "count"),
                                    " patients at ", Ref("data", None, "n_sites", "count"), " sites"]  # fmt: skip
    if total is not None:
        parts += ["; ", Ref("cohort.flow", total, "analysed", "count"), " analysed, ", Ref("cohort.flow", total, "excluded", "count"), " excluded, ",
                  Ref("cohort.flow", total, "failed", "count"), " failed (counted in every table)"]  # fmt: skip
    parts.append(". Intervals describe these sites, not a new site.")
    return tuple(parts)


def _overlap_sentence(overlap: Mapping[str, Any]) -> Sentence:
    if not overlap.get("training_sites_known"):
        return ("The model card does not name its training sites: no audited site can be confirmed as external.",)
    external, seen = overlap.get("external_sites") or [], overlap.get("overlapping_sites") or []
    text = f"The model was trained on {', '.join(overlap['training_sites'])} (model card). "
    if external and seen:
        text += (f"Truly external: {', '.join(external)}; {', '.join(seen)} also supplied training data, so their results are not external "
                 f"validation: they are analysed separately ({axis_label(SITE_ROLE)}).")
    elif external:
        text += "No audited site supplied training data: every site is external."
    else:
        text += "Every audited site supplied training data: this is not an external validation."
    return (text,)


def _gap_sentence(i: int, r: Mapping[str, Any], axis: str, label: str, higher: bool, level: int, site_groups: Mapping[str, list[str]] | None,
                  cases: pd.DataFrame, stats: Mapping[str, Any]) -> Sentence:  # fmt: skip
    words, scale = _direction(float(r["difference"]), higher)
    group, reference = str(r["group"]), str(r["reference"])
    if axis == "site":
        described = site_description(cases, group)
        who, than = f"at {group}" + (f" ({described})" if described else ""), f"at {reference}"
    elif axis == SITE_ROLE:
        sites = sorted(cases.loc[cases[SITE_ROLE].astype(str) == group, "site"].astype(str).unique()) if SITE_ROLE in cases else []
        who, than = f"at the {group} site(s)" + (f" ({', '.join(sites)})" if sites else ""), f"at the {reference}s"
    else:
        who, than = f"for {axis_label(axis)} {group}", f"for {reference}"
    family = r.get("family") or "pre-specified"
    parts: list[str | Ref] = [
        f"{structure_label(r['structure']).capitalize()} {label} is ", Ref("statistics.gaps", i, "difference", r["metric"], scale), words,
        f" {who} than {than}",
    ]
    if r.get("diff_ci_low") is not None or r.get("diff_ci_high") is not None:  # small groups get no interval
        parts += _interval("statistics.gaps", i, "diff_ci_low", "diff_ci_high", r["metric"], scale, level)
    if r.get("p_value") is None:
        minimum = stats.get("settings", {}).get("min_group_size")
        status = r.get("status")
        reason = status if status not in (None, "tested", "not tested") else f"a group has fewer than {minimum} patients, descriptive only"
        parts.append(f"; not tested: {reason} ({family} family).")
    else:
        parts += [f"; {readable_test(r.get('test'))}, adjusted p ", Ref("statistics.gaps", i, "p_adjusted", "p"),
                  f" ({'significant' if r.get('significant') else 'not significant'} within the {family} family)."]  # fmt: skip
    if site_groups and axis != SITE_ROLE:
        lonely = [f"{g} occurs only at {site_groups[g][0]}" for g in (group, reference) if len(site_groups.get(g, [])) == 1]
        parts.append(f" {axis_label(axis).capitalize()} is confounded with site (every site has one {axis_label(axis)}"
                     + (f"; {' and '.join(lonely)}" if lonely else "") + "): this gap compares sites.")  # fmt: skip
    return tuple(parts)


def _age_sentences(stats: Mapping[str, Any], primary: str, label: str, level: int) -> list[Sentence]:
    """Age slopes of the adjusted linear mixed model per decade (the per-year slope times 10), for the structures
    whose slope is significant at alpha; one sentence lists the others."""
    out: list[Sentence] = []
    alpha = float(stats.get("settings", {}).get("alpha", 0.05))
    flat = []
    for i, r in enumerate(stats.get("adjusted") or []):
        if r.get("metric") != primary or r.get("model") != "mixedlm" or not str(r.get("term", "")).startswith("age_years"):
            continue
        if not isinstance(r.get("estimate"), (int, float)):
            continue
        if not (isinstance(r.get("p_value"), (int, float)) and r["p_value"] < alpha):
            flat.append(structure_label(r["structure"]))
            continue
        out.append((f"Per decade of age, {structure_label(r['structure'])} {label} changes by ", Ref("statistics.adjusted", i, "estimate", "effect", 10.0),
                    *_interval("statistics.adjusted", i, "ci_low", "ci_high", "effect", 10.0, level), ", p ", Ref("statistics.adjusted", i, "p_value", "p"),
                    " (adjusted mixed model, see the adjusted analysis for its flags)."))  # fmt: skip
    if flat:
        out.append((f"No age effect on {label} is detected for {', '.join(flat)} (adjusted mixed model, p at least {alpha:g}).",))
    return out
