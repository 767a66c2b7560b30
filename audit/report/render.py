"""Render report.html from a run folder (results, metric table, manifest via :class:`~audit.runfolder.RunFolder`): one self-contained file.

Every number in a table is written by :func:`_Numbers.cell` as
``<span class="num" data-src="statistics.gaps" data-row="3" data-field="p_adjusted" data-kind="p"
data-axis="site" data-group="site-B" data-structure="vertebral_body" data-metric="dice">…</span>``
(the key fields of the row that are present, see ``KEY_FIELDS``) so a test can find each displayed number,
look its row up in results.json by key and re-format the value independently (docs/report.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from audit.fileio import atomic_write_text
from audit.harmonize.labels import resolve_label_map
from audit.ontology import COARSE_VALUES, LabelMap
from audit.records import EVALUABLE_STATUSES
from audit.report import labels
from audit.report.checklist import NOT_PROVIDED, checklist_rows
from audit.report.figures import (
    OKABE_ITO,
    distribution_plot,
    flow_plot,
    forest_plot,
    intersection_heatmap,
    metric_range,
)
from audit.report.findings import Ref, key_findings
from audit.report.flags import adjusted_flags, site_level_axes
from audit.report.formatting import format_value
from audit.harmonize.limits import ReadLimits
from audit.report.gallery import case_figure, worst_cases
from audit.report.redact import redact_paths
from audit.report.vertebrae import vertebra_section
from audit.runfolder import RunFolder

logger = logging.getLogger(__name__)

__all__ = ["KEY_FIELDS", "SECTIONS", "build_context", "render_report"]

#: Row fields copied to ``data-*`` attributes of each number span (those present in the row).
KEY_FIELDS = ("id", "axis", "comparison", "group", "reference", "structure", "metric", "model", "term", "site", "column", "warning", "case_id")

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("audit.report", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
_ENV.filters["redact"] = lambda v: redact_paths(v) if isinstance(v, str) else v
_STATUS_ORDER = {"fail": 0, "inconclusive": 1, "pass": 2}

#: The report's sections in order: (anchor id, navigation title, template under ``templates/sections/``). A new
#: section is one partial plus one line here; each partial reads the shared context built by :func:`build_context`.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("findings", "Key findings", "findings.j2"),
    ("summary", "Acceptance", "summary.j2"),
    ("study", "Study and model", "study.j2"),
    ("flow", "Participant flow", "flow.j2"),
    ("cohort", "Cohort", "cohort.j2"),
    ("overall", "Overall", "overall.j2"),
    ("subgroups", "Subgroups", "subgroups.j2"),
    ("gaps", "Gaps", "gaps.j2"),
    ("adjusted", "Adjusted", "adjusted.j2"),
    ("equivalence", "Equivalence", "equivalence.j2"),
    ("vertebrae", "Vertebrae", "vertebrae.j2"),
    ("gallery", "Worst cases", "gallery.j2"),
    ("quality", "Data quality", "quality.j2"),
    ("methods", "Methods", "methods.j2"),
    ("checklist", "Checklist", "checklist.j2"),
    ("provenance", "Provenance", "provenance.j2"),
    ("limitations", "Limitations", "limitations.j2"),
)


class _Numbers:
    """Looks values up in results.json by (source, row, field) and renders them as tagged spans.

    ``row=None`` reads a field of a mapping (``data.n_cases``); ``scale`` multiplies the value before formatting
    (an age slope per decade: 10; a decrease written as a positive "lower": -1) and is written as ``data-scale``.
    """

    def __init__(self, results: Mapping[str, Any]):
        self.results = results

    def table(self, source: str) -> Any:
        node: Any = self.results
        for key in source.split("."):
            node = node[key]
        return node

    def cell(self, source: str, row: int | None, field: str, kind: str = "", scale: float | None = None) -> Markup:
        record = self.table(source) if row is None else self.table(source)[row]
        value = record[field]
        if scale is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = value * scale
        text = format_value(value, kind)
        keys = Markup("").join(Markup(' data-{}="{}"').format(k.replace("_", "-"), record[k]) for k in KEY_FIELDS if record.get(k) is not None)
        where = Markup("") if row is None else Markup(' data-row="{}"').format(row)
        scaled = Markup("") if scale is None else Markup(' data-scale="{}"').format(f"{scale:g}")
        return Markup('<span class="num" data-src="{}"{} data-field="{}" data-kind="{}"{}{}>{}</span>').format(
            source, where, field, kind, scaled, keys, text
        )

    def ref(self, ref: Ref) -> Markup:
        """A :class:`~audit.report.findings.Ref` of a key-finding sentence as a tagged number."""
        return self.cell(ref.source, ref.row, ref.field, ref.kind, ref.scale)


def _rows(results: Mapping[str, Any], source: str, **equals: Any) -> list[tuple[int, Mapping[str, Any]]]:
    node: Any = results
    for key in source.split("."):
        node = node[key]
    return [(i, r) for i, r in enumerate(node) if all(r.get(k) == v for k, v in equals.items())]


def _thresholds(protocol: Mapping[str, Any], metric: str, axis: str | None) -> list[tuple[float, str, str | None]]:
    """Acceptance thresholds on a group or overall mean of ``metric`` that apply to ``axis`` (None: the overall scope)."""
    out = []
    for c in protocol.get("acceptance", []):
        if c["metric"] == metric and c["estimate"] in ("mean", "median") and c["scope"] in ("overall", axis):
            only = None if c["structure"] == "all" else c["structure"]
            out.append((float(c["threshold"]), f"criterion {c['id']}: {c['bound']} bound {c['operator']} {c['threshold']:g}", only))
    return out


def build_context(run_dir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the templates show, derived from the run folder."""
    protocol = results["protocol"]
    stats = results["statistics"]
    structures: Sequence[str] = results["metrics"]["structures"]
    metric_names: Sequence[str] = results["metrics"]["names"]
    definitions = results["metrics"]["definitions"]
    primary = protocol["statistics"]["primary_metric"]
    primary = primary if primary in metric_names else metric_names[0]
    higher = definitions[primary]["higher_is_better"]
    margin = protocol["statistics"]["equivalence_margins"].get(primary)
    estimates = _numeric(pd.DataFrame(stats["group_estimates"]), ("mean", "median", "sd", "ci_low", "ci_high"))
    folder = RunFolder(run_dir)
    cases = folder.read_metrics().merge(folder.read_manifest(), on="case_id", how="left")
    if "age_band" not in cases:
        from audit.stats import add_age_band

        cases = add_age_band(cases, protocol["subgroups"]["age_bands"])
    roles = ((results.get("study") or {}).get("overlap") or {})
    if roles.get("training_sites_known") and "site_role" not in cases:
        from audit.study import site_roles

        cases["site_role"] = site_roles(cases, roles["training_sites"])
    axes = list(dict.fromkeys(estimates["axis"])) if len(estimates) else []
    single_axes = [a for a in axes if " x " not in a]
    intersections = [a for a in axes if " x " in a]
    t0 = time.perf_counter()
    primary_rows = estimates[estimates["metric"] == primary] if len(estimates) else estimates
    failure = protocol["statistics"]["failure_thresholds"].get(primary)
    lines = {a: _thresholds(protocol, primary, a) for a in single_axes}
    xlim = metric_range([*primary_rows.get("ci_low", []), *primary_rows.get("ci_high", []), *(t for ts in lines.values() for t, _, _ in ts)])
    forests = {
        a: forest_plot(estimates, axis=a, metric=primary, structures=structures, margin=margin, xlim=xlim, thresholds=lines[a])
        for a in single_axes
    }
    scored = cases["status"].isin(EVALUABLE_STATUSES) & np.isfinite(cases["value"]) & (cases["metric"] == primary)
    by = [b for b in ("vendor", "field_strength") if b in cases] if scored.any() else []  # no box plots when nothing was scored
    ylim = metric_range([*cases.loc[scored, "value"], *([failure] if failure is not None else [])])
    box_lines = [(float(failure), f"failure threshold {failure:g}", None)] if failure is not None else []
    distributions = {b: distribution_plot(cases, by=b, metric=primary, structures=structures, ylim=ylim, thresholds=box_lines) for b in by}
    heatmaps = {a: intersection_heatmap(estimates, axis=a, metric=primary, structures=structures) for a in intersections}
    flow = (results.get("cohort") or {}).get("flow") or []
    gallery = _gallery(cases, protocol, primary, higher, results.get("model", {}).get("labels"))
    figures = {"flow": flow_plot(flow) if flow else None}
    logger.info("report figures in %.2f s", time.perf_counter() - t0)
    criteria = stats.get("criteria") or _criteria_from_rows(stats["acceptance"])
    acceptance = sorted(
        ({"id": cid, "status": status, "rows": _rows(results, "statistics.acceptance", id=cid)} for cid, status in criteria.items()),
        key=lambda c: _STATUS_ORDER.get(c["status"], 3),
    )
    table1_axes = list(dict.fromkeys(r["axis"] for r in results["cohort"]["table1"]))
    vertebrae = vertebra_section(results)
    return {
        "r": results,
        "n": _Numbers(results),
        "rows": lambda source, **eq: _rows(results, source, **eq),
        "sections": tuple(s for s in SECTIONS if s[0] != "vertebrae" or vertebrae),  # per-vertebra only for CT labelling audits
        "primary": primary,
        "primary_label": labels.metric_label(primary, definitions),
        "structures": structures,
        "metric_names": metric_names,
        "acceptance": acceptance,
        "table1_axes": table1_axes,
        "single_axes": single_axes,
        "intersections": intersections,
        "forests": forests,
        "distributions": distributions,
        "heatmaps": heatmaps,
        "figures": figures,
        "flow": [(i, r) for i, r in enumerate(flow)],
        "findings": key_findings(results, cases, primary=primary),
        "site_level": site_level_axes(cases, single_axes),
        "adjusted_flags": adjusted_flags(stats.get("adjusted") or [], cases, stats.get("warnings") or [], protocol["statistics"]["adjusted_model"]["groups"]),
        "checklist": checklist_rows(results),
        "not_provided": NOT_PROVIDED,
        "section_titles": {sid: title for sid, title, _ in SECTIONS},
        "gallery": gallery,
        "definitions": definitions,
        "failures": results["failures"],
        "harmonization_warnings": results["harmonization"]["warnings"],
        "completeness": results["harmonization"]["metadata_completeness"],
        "site_quality": _site_quality(results),
        "vertebrae": vertebrae,
        "annotation": _annotation(results),
        "synthetic_columns": results["data"].get("synthetic_columns", []),
        "fmt": format_value,
        "ml": lambda m: labels.metric_label(m, definitions),
        "sl": labels.structure_label,
        "al": labels.axis_label,
        "tl": labels.readable_test,
        "cl": labels.comparison_label,
        "palette": [(s, OKABE_ITO[i % len(OKABE_ITO)]) for i, s in enumerate(s for s in protocol["structures"] if s in COARSE_VALUES)],
        **_limitations(results),
    }


def _numeric(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Columns as floats: JSON null (no evaluable case) becomes NaN and ``"inf"`` becomes infinity."""
    present = [c for c in columns if c in table]
    return table.assign(**{c: pd.to_numeric(table[c], errors="coerce").astype(float) for c in present})


def _criteria_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Overall status per criterion id when results.json has no ``statistics.criteria``: the worst row wins."""
    out: dict[str, str] = {}
    for row in rows:
        current = out.get(row["id"])
        if current is None or _STATUS_ORDER.get(row["status"], 3) < _STATUS_ORDER.get(current, 3):
            out[row["id"]] = row["status"]
    return out


def _site_quality(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per site: Table 1 row index (cases), failed cases, unmapped-value warnings, unknown metadata cells."""
    sites = [(i, r) for i, r in enumerate(results["cohort"]["table1"]) if r["axis"] == "site"]
    out = []
    for i, row in sites:
        site = row["group"]
        failed = {f["case_id"] for f in results["failures"] if f.get("site") == site}
        warned = sum(int(w.get("n_cases") or 0) for w in results["harmonization"]["warnings"] if w.get("site") == site)
        cells = [c for c in results["harmonization"]["metadata_completeness"] if c.get("site") == site]
        known, unknown = sum(int(c["known"] or 0) for c in cells), sum(int(c["unknown"] or 0) for c in cells)
        complete = 100.0 * known / (known + unknown) if known + unknown else None
        out.append({"site": site, "table1_row": i, "failed": len(failed), "warned": warned, "unknown": unknown, "complete": complete})
    return out


def _annotation(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The site x structure annotation matrix (``metrics.annotation``): per site, (structure, row index, annotated)."""
    out: dict[str, list[tuple[str, int, bool]]] = {}
    for i, row in enumerate(results["metrics"].get("annotation", [])):
        out.setdefault(row["site"], []).append((row["structure"], i, bool(row["annotated"])))
    return [{"site": site, "cells": cells} for site, cells in out.items()]


def _label_map(name: str, values: Mapping[str, str] | None) -> LabelMap | None:
    """The model's labels (``values``) or a known map by name, via the sites' resolver; None (raw values drawn) if neither."""
    try:
        return resolve_label_map(values or name, name=name)
    except (KeyError, ValueError) as exc:
        logger.warning("gallery: label map %r not usable (%s); drawing raw values", name, exc)
        return None


def _gallery(
    cases: pd.DataFrame, protocol: Mapping[str, Any], metric: str, higher: bool, model_labels: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """The worst ``report.worst_cases_per_group`` cases of each group of each ``report.gallery_axes`` axis.

    Bounded: axes x groups x per_group images; a case shown on several axes is drawn once. File paths in
    ``cases`` are absolute (:meth:`audit.runfolder.RunFolder.read_manifest` resolves the stored ones).
    """
    per_group = int(protocol["report"]["worst_cases_per_group"])
    limits = ReadLimits(**protocol.get("limits", {}))  # the run's budget (older results.json: the defaults)
    axes = [a for a in protocol["report"].get("gallery_axes", ["site"]) if a in cases]
    if per_group <= 0 or cases.empty or not axes:
        return []
    info = cases.drop_duplicates("case_id").set_index("case_id")
    structures = {s: COARSE_VALUES[s] for s in protocol["structures"] if s in COARSE_VALUES}
    prediction_map = _label_map("model", model_labels) if model_labels else None
    drawn: dict[str, str | None] = {}
    values = cases[(cases["metric"] == metric) & cases["status"].isin(EVALUABLE_STATUSES)]
    per_case: dict[str, dict[str, float]] = {}
    for cid, structure, value in values[["case_id", "structure", "value"]].itertuples(index=False):
        per_case.setdefault(cid, {})[structure] = float(value)
    out = []
    for axis in axes:
        worst = worst_cases(cases.assign(**{axis: cases[axis].astype(str)}), axis=axis, metric=metric, higher_is_better=higher, per_group=per_group)
        groups = []
        for group, sub in worst.groupby(axis, sort=True):
            figures = []
            for rec in sub.itertuples(index=False):
                if rec.case_id not in drawn:
                    row = {**info.loc[rec.case_id].to_dict(), "case_id": rec.case_id}
                    has_prediction = isinstance(row.get("prediction_path"), str) and bool(row["prediction_path"])
                    reference_map = _label_map(str(row.get("label_map")), None) if has_prediction else None
                    drawn[rec.case_id] = (
                        case_figure(
                            row, label_values=structures, reference_map=reference_map, prediction_map=prediction_map, limits=limits
                        )
                        if has_prediction
                        else None
                    )
                if drawn[rec.case_id]:
                    per_structure = per_case.get(rec.case_id, {})
                    figures.append({"case_id": rec.case_id, "value": float(rec.value), "uri": drawn[rec.case_id],
                                    "structures": [(s, per_structure[s]) for s in protocol["structures"] if s in per_structure]})  # fmt: skip
            groups.append({"group": group, "cases": figures})
        out.append({"axis": axis, "groups": groups})
    return out


def _limitations(results: Mapping[str, Any]) -> dict[str, Any]:
    """Small (descriptive-only) groups and Unknown (missing) demographic counts, for the limitations section."""
    small = dict.fromkeys((r["axis"], r["group"]) for r in results["statistics"]["group_estimates"] if r.get("descriptive_only"))
    missing = [(i, r) for i, r in enumerate(results["cohort"]["table1"]) if r["group"] == "Unknown" and r["axis"] != "site"]
    return {"small_groups": list(small), "missing_rows": missing}


def render_report(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for a run folder and return its path.

    Raises
    ------
    audit.runfolder.RunFolderError
        If the folder has no results.json (the run did not reach the stats stage).
    """
    folder = RunFolder(run_dir)
    results = folder.read_results()
    context = build_context(folder.root, results)
    html = _ENV.get_template("report.html.j2").render(**context)
    target = Path(out) if out else folder.report_path
    atomic_write_text(target, html)
    logger.info("report written: %s (%.1f kB)", target, target.stat().st_size / 1024)
    return target

