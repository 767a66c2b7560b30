"""The statistics stage: one call from the analysis table to every estimate, gap, test and decision."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from audit.protocol import AcceptanceCriterion, StatisticsSettings, SubgroupSettings
from audit.provenance import json_ready
from audit.records import UNKNOWN
from audit.stats.acceptance import (
    ACCEPTANCE_COLUMNS,
    criterion_status,
    evaluate_acceptance,
)
from audit.stats.adjusted import ADJUSTED_COLUMNS, adjusted_effects
from audit.stats.failures import combine_acceptance, impute_failures
from audit.stats.gaps import (
    EQUIVALENCE_COLUMNS,
    GAP_COLUMNS,
    POWER_COLUMNS,
    THESE_SITES,
    adjust_pvalues,
    axis_gaps,
)
from audit.stats.groups import (
    ESTIMATE_COLUMNS,
    INTERSECTION_SEP,
    GroupResult,
    axis_labels,
    axis_unknown,
    group_result,
    prepare,
)
from audit.stats.intervals import PROPORTION_INTERVALS
from audit.stats.meta import new_site_table
from audit.stats.sitelevel import CONFOUNDED, site_level_columns

logger = logging.getLogger(__name__)

__all__ = ["StatsResults", "analyze"]


@dataclasses.dataclass(frozen=True)
class StatsResults:
    """All statistical results of a run as tidy tables (columns in docs/statistics.md)."""

    overall: pd.DataFrame
    group_estimates: pd.DataFrame
    gaps: pd.DataFrame
    equivalence: pd.DataFrame
    power: pd.DataFrame
    adjusted: pd.DataFrame
    acceptance: pd.DataFrame
    new_site: pd.DataFrame
    warnings: tuple[str, ...]
    settings: Mapping[str, Any]

    @property
    def criteria(self) -> dict[str, str]:
        """Overall pass / fail / inconclusive per acceptance criterion id."""
        return criterion_status(self.acceptance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN -> null, inf -> "inf")."""
        tables = {name: getattr(self, name) for name in ("overall", "group_estimates", "gaps", "equivalence", "power", "adjusted", "acceptance", "new_site")}
        return json_ready({**tables, "criteria": self.criteria, "warnings": list(self.warnings), "settings": dict(self.settings)})


def _axis_columns(subgroups: SubgroupSettings) -> list[str]:
    """Every manifest column an axis of ``subgroups`` uses (intersections included), in order."""
    return list(dict.fromkeys([*subgroups.columns, *(c for combo in subgroups.intersections for c in combo)]))


def _axes(subgroups: SubgroupSettings) -> list[tuple[str, str | tuple[str, ...]]]:
    axes: list[tuple[str, str | tuple[str, ...]]] = [(c, c) for c in subgroups.columns]
    axes += [(INTERSECTION_SEP.join(combo), tuple(combo)) for combo in subgroups.intersections]
    return axes


def _tests_description(statistics: StatisticsSettings) -> dict[str, str]:
    site_level = {"site-level axes": "Welch t-test on site means (unit: site); 'confounded with site' (not tested) when a level has fewer than 2 sites",
                  "worst_vs_best": "simultaneous intervals over all pairs of groups: max-T cluster bootstrap (patient-level axes) or "
                                   "Bonferroni-Welch on site means (site-level axes); the p-value is the adjusted p of the same pair"}  # fmt: skip
    if statistics.gap_test == "permutation":
        n = statistics.permutation_iterations
        return {"all metrics": f"two-sided permutation test of the difference of patient means ({n} relabellings, exact when fewer exist)", **site_level}
    return {"bounded metrics": "Welch t-test on patient means", "distance metrics": "Mann-Whitney U on patient means", **site_level}


def analyze(
    table: pd.DataFrame,
    *,
    structures: Sequence[str],
    metrics: Sequence[str],
    subgroups: SubgroupSettings,
    statistics: StatisticsSettings,
    acceptance: Sequence[AcceptanceCriterion] = (),
    higher_is_better: Mapping[str, bool],
    bounded: Mapping[str, bool] | None = None,
    signed: Sequence[str] | None = None,
    failure_interval: str = "wilson",
) -> StatsResults:
    """Estimate, compare and judge every subgroup of the analysis table.

    Parameters
    ----------
    table : pandas.DataFrame
        The metric table joined with the manifest (plus ``age_band``), one row per case x structure x metric.
    structures, metrics : sequence of str
        What to analyse.
    subgroups, statistics, acceptance
        The protocol's settings.
    higher_is_better : mapping
        Direction of each metric (from :data:`audit.metrics.METRICS`).
    bounded : mapping, optional
        Metrics bounded in [0, 1] (get a logit-scale adjusted model). Defaults to the metric registry
        (:func:`audit.metrics.registry.metric_spec`); unknown names are not bounded.
    signed : sequence of str, optional
        Metrics whose ideal is 0 with both signs meaningful (``rel_volume_error``): failures are
        ``|value| > threshold`` and worst/best groups are ranked by ``|mean|``. Defaults to the registry.
    failure_interval : {"wilson", "clopper_pearson"}
        Interval of the failure rates (the protocol has no setting for it yet; Wilson is the default).

    Returns
    -------
    StatsResults
        Tidy tables (columns in docs/statistics.md); nothing here raises a Python warning: notes go to
        ``StatsResults.warnings``.
    """
    missing = sorted(set(metrics) - set(higher_is_better))
    if missing:
        raise ValueError(f"higher_is_better: no direction given for metrics {missing}")
    if failure_interval not in PROPORTION_INTERVALS:
        raise ValueError(f"failure_interval: allowed values are {sorted(PROPORTION_INTERVALS)}; found {failure_interval!r}")
    specs = _registry_flags(metrics)
    bounded = dict(bounded) if bounded is not None else {m: specs[m][0] for m in metrics}
    signed = tuple(signed) if signed is not None else tuple(m for m in metrics if specs[m][1])
    level, n_boot, method = statistics.confidence_level, statistics.bootstrap_iterations, statistics.bootstrap_method
    prepared = prepare(table, structures=structures, metrics=metrics)
    meta_scales = {m: "logit" if bounded.get(m) else "log" if not higher_is_better[m] and m not in signed else "identity" for m in metrics}
    core = dict(subgroups=subgroups, statistics=statistics, higher_is_better=higher_is_better, signed=signed, failure_interval=failure_interval,
                meta_scales=meta_scales)  # fmt: skip
    main = _estimate(prepared, **core)
    notes = main.notes
    adjusted, adjusted_notes = adjusted_effects(table, settings=statistics.adjusted_model, structures=structures, bounded=bounded, level=level)
    judge = dict(structures=structures, min_group_size=statistics.min_group_size)
    acceptance_table = evaluate_acceptance(acceptance, overall=main.overall, group_estimates=main.estimates, gaps=main.gaps, new_site=main.new_site, **judge)
    policy = statistics.failure_policy
    if policy == "worst_value" and acceptance and prepared.failed.any():
        # failed cases count: score them at the worst value and judge again on the axes the criteria use
        imputed, imputed_note = impute_failures(prepared, higher_is_better=higher_is_better, bounded=bounded, signed=signed)
        scopes = {c.scope for c in acceptance}
        worst = _estimate(imputed, only_axes=scopes, **core)
        worst_table = evaluate_acceptance(acceptance, overall=worst.overall, group_estimates=worst.estimates, gaps=worst.gaps,
                                          new_site=worst.new_site, **judge)  # fmt: skip
        acceptance_table = combine_acceptance(worst_table, acceptance_table)
        notes.append(imputed_note)
    else:
        acceptance_table = combine_acceptance(acceptance_table, acceptance_table, imputed=False)
    warnings = notes + _warnings(prepared, main.estimates, statistics.min_group_size) + adjusted_notes
    settings = {
        "unit": "patient (cluster bootstrap; repeated exams of a patient resampled together)",
        "confidence_level": level,
        "bootstrap_iterations": n_boot,
        "bootstrap_method": method,
        "seed": statistics.seed,
        "overall_strata": "site",
        "group_strata": "site (sites with fewer than 2 patients in a group are merged)",
        "multiplicity": statistics.multiplicity,
        "family_size": int(main.gaps["p_value"].notna().sum()),
        "alpha": statistics.alpha,
        "min_group_size": statistics.min_group_size,
        "failure_interval": failure_interval,
        "failure_policy": policy,
        "gap_test": statistics.gap_test,
        "tests": _tests_description(statistics),
        "axis_units": main.unit_rows,
        "merged_strata": {k: list(v) for k, v in main.merged_strata.items()},
        "population": "these sites: every estimate, gap and test is about the sampled sites (bootstrap stratified by site); "
                      "new-site prediction intervals are in new_site",
    }  # fmt: skip
    return StatsResults(
        overall=main.overall,
        group_estimates=main.estimates,
        gaps=main.gaps,
        equivalence=main.equivalence,
        power=main.power,
        adjusted=adjusted.reindex(columns=list(ADJUSTED_COLUMNS)),
        acceptance=acceptance_table.reindex(columns=list(ACCEPTANCE_COLUMNS)),
        new_site=main.new_site,
        warnings=tuple(warnings),
        settings=settings,
    )


@dataclasses.dataclass(frozen=True)
class _Estimates:
    overall: pd.DataFrame
    estimates: pd.DataFrame
    gaps: pd.DataFrame
    equivalence: pd.DataFrame
    power: pd.DataFrame
    new_site: pd.DataFrame
    unit_rows: list[dict]
    merged_strata: dict[str, tuple[str, ...]]
    notes: list[str]


def _estimate(
    prepared,
    *,
    subgroups: SubgroupSettings,
    statistics: StatisticsSettings,
    higher_is_better: Mapping[str, bool],
    signed: Sequence[str],
    failure_interval: str,
    meta_scales: Mapping[str, str],
    only_axes: set[str] | None = None,
) -> _Estimates:
    """Overall and per-group estimates, gaps, equivalence, power and the new-site table of one prepared table.

    ``only_axes`` restricts the subgroup axes (the overall estimate and the new-site table are always made);
    every axis keeps its own seeded streams, so an axis gets the same resamples whichever others are computed.
    """
    level = statistics.confidence_level
    n_axes = len(_axes(subgroups))
    # bootstrap streams first (their values do not depend on the test choice), then one permutation stream per axis
    seeds = np.random.SeedSequence(statistics.seed).spawn(1 + 2 * n_axes)
    permutation_seeds = seeds[1 + n_axes :]
    common = dict(
        level=level, method=statistics.bootstrap_method, n_resamples=statistics.bootstrap_iterations, min_group_size=statistics.min_group_size,
        failure_thresholds=statistics.failure_thresholds, higher_is_better=higher_is_better, signed=signed,
        failure_interval=failure_interval,
    )  # fmt: skip
    everyone = np.ones(len(prepared.cases), dtype=bool)
    sites = prepared.cases["site"]
    overall = group_result(prepared, everyone, axis="overall", group="all", rng=np.random.default_rng(seeds[0]), strata=sites, **common)
    merged_strata = {"overall": overall.merged_strata} if overall.merged_strata else {}
    site_level = site_level_columns(prepared.cases, _axis_columns(subgroups))
    estimate_tables = []
    gap_rows: list[dict] = []
    equivalence_rows: list[dict] = []
    power_rows: list[dict] = []
    unit_rows: list[dict] = []
    notes: list[str] = []
    for (name, columns), seed, permutation_seed in zip(_axes(subgroups), seeds[1 : 1 + n_axes], permutation_seeds):
        if only_axes is not None and name not in only_axes:
            continue
        rng = np.random.default_rng(seed)
        labels = axis_labels(prepared.cases, columns).to_numpy()
        requested = subgroups.reference_groups.get(name)
        if requested is not None and requested not in set(labels):
            notes.append(f"subgroups.reference_groups.{name}: group {requested!r} is not in the data; the largest known group is the reference")
        unknown = axis_unknown(prepared.cases, columns)
        results: list[GroupResult] = []
        for g in sorted(set(labels)):
            mask = labels == g
            # stratified by site: the intervals are about these sites (each site's share of the group held fixed)
            result = group_result(prepared, mask, axis=name, group=str(g), rng=rng, strata=sites, **common)
            results.append(dataclasses.replace(result, known=not bool(unknown[mask].any())))
            if result.merged_strata:
                merged_strata[f"{name}={g}"] = result.merged_strata
        estimate_tables.extend(r.table for r in results)
        used = [columns] if isinstance(columns, str) else list(columns)
        axis_site_level = any(c in site_level for c in used)
        unit_rows.append({"axis": name, "unit": "site" if axis_site_level else "patient", "site_level_columns": [c for c in used if c in site_level]})
        gaps, equiv, power = axis_gaps(
            name, results, prepared.columns, reference=subgroups.reference_groups.get(name), level=level, alpha=statistics.alpha,
            min_group_size=statistics.min_group_size, margins=statistics.equivalence_margins, higher_is_better=higher_is_better,
            signed=signed, gap_test=statistics.gap_test, n_permutations=statistics.permutation_iterations,
            rng=np.random.default_rng(permutation_seed), site_level=axis_site_level,
        )  # fmt: skip
        gap_rows += gaps
        equivalence_rows += equiv
        power_rows += power
    gaps_table = pd.DataFrame(gap_rows, columns=[c for c in GAP_COLUMNS if c not in ("p_holm", "p_fdr_bh", "p_adjusted", "significant")])
    gaps_table = adjust_pvalues(gaps_table, statistics.multiplicity, statistics.alpha)
    power_table = pd.DataFrame(power_rows, columns=list(POWER_COLUMNS))
    later = ("mdd", "is_reference", "population")  # added below
    estimates = (pd.concat(estimate_tables, ignore_index=True) if estimate_tables
                 else pd.DataFrame(columns=[c for c in ESTIMATE_COLUMNS if c not in later]))  # fmt: skip
    keys = ["axis", "group", "structure", "metric"]
    estimates = estimates.merge(power_table[[*keys, "mdd"]], on=keys, how="left")
    refs = gaps_table.loc[gaps_table["comparison"] == "vs_reference", ["axis", "reference", "structure", "metric"]].drop_duplicates()
    refs = refs.rename(columns={"reference": "group"}).assign(is_reference=True)
    estimates = estimates.merge(refs, on=keys, how="left")
    estimates["is_reference"] = estimates["is_reference"].astype("boolean").fillna(False).astype(bool)
    estimates = estimates.reindex(columns=list(ESTIMATE_COLUMNS)).assign(population=THESE_SITES)
    overall_table = overall.table.assign(mdd=np.nan, is_reference=False).reindex(columns=list(ESTIMATE_COLUMNS)).assign(population=THESE_SITES)
    new_site, new_site_notes = new_site_table(overall.patient_means, overall.patient_sites, prepared.columns, level=level, scales=meta_scales)
    notes += new_site_notes + _site_level_notes(unit_rows, gaps_table)
    if merged_strata:
        listed = ", ".join(list(merged_strata)[:5]) + (f" and {len(merged_strata) - 5} more" if len(merged_strata) > 5 else "")
        notes.append(f"site-stratified bootstrap: in {len(merged_strata)} estimate(s) ({listed}) a site had fewer than 2 patients and was "
                     f"resampled together with other sites (settings.merged_strata lists them)")  # fmt: skip
    return _Estimates(overall_table, estimates, gaps_table, pd.DataFrame(equivalence_rows, columns=list(EQUIVALENCE_COLUMNS)), power_table,
                      new_site, unit_rows, merged_strata, notes)  # fmt: skip


def _site_level_notes(unit_rows: Sequence[Mapping[str, Any]], gaps: pd.DataFrame) -> list[str]:
    """One plain line per site-level axis, naming the levels confounded with a single site."""
    out = []
    for row in unit_rows:
        if row["unit"] != "site":
            continue
        sub = gaps[(gaps["axis"] == row["axis"]) & (gaps["status"] == CONFOUNDED)]
        lonely = sorted({str(g) for g in sub["group"]} | {str(r) for r in sub.loc[sub["n_sites_reference"] < 2, "reference"]})
        line = (f"{row['axis']} is a property of sites ({', '.join(row['site_level_columns'])} constant within every site): its levels are "
                f"compared with the site as the unit (Welch on site means, n = number of sites)")  # fmt: skip
        if lonely:
            line += f"; level(s) {', '.join(lonely)} occur at a single site: confounded with site, not tested"
        out.append(line)
    return out


def _registry_flags(metrics: Sequence[str]) -> dict[str, tuple[bool, bool]]:
    """(bounded, signed) of each metric from the metric registry; (False, False) for names it does not know."""
    from audit.metrics.registry import metric_spec

    out = {}
    for m in metrics:
        try:
            spec = metric_spec(m)
            out[m] = (bool(spec.bounded), bool(spec.signed))
        except ValueError:
            out[m] = (False, False)
    return out


def _warnings(prepared, estimates: pd.DataFrame, min_group_size: int) -> list[str]:
    out = []
    small = estimates.loc[estimates["descriptive_only"].astype(bool), ["axis", "group"]].drop_duplicates()
    if len(small):
        listed = ", ".join(f"{a}={g}" for a, g in small.head(20).itertuples(index=False))
        more = f" and {len(small) - 20} more" if len(small) > 20 else ""
        out.append(f"{len(small)} group(s) have fewer than {min_group_size} patients and are descriptive only (no tests): {listed}{more}")
    n_failed = int(prepared.failed.any(axis=1).sum())
    if n_failed:
        out.append(f"{n_failed} case(s) failed; they are counted in n_failed of every estimate, not included in means")
    if prepared.n_without_patient:
        out.append(f"{prepared.n_without_patient} case(s) without patient_id are treated as one patient each (own bootstrap cluster)")
    n_nonfinite = int(prepared.nonfinite.sum())
    if n_nonfinite:
        out.append(f"{n_nonfinite} non-finite metric value(s) (e.g. relative volume error of a false positive) are counted in n_nonfinite, not averaged")
    for axis in ("sex", "race", "ethnicity", "vendor", "field_strength", "age_years"):
        if axis in prepared.cases.columns:
            col = prepared.cases[axis]
            unknown = int((col.isna() | (col.astype(str) == UNKNOWN)).sum())
            if unknown:
                out.append(f"{axis}: {unknown} of {len(col)} case(s) Unknown; they form their own group and are never a reference")
    return out
