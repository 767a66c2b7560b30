"""HTML report of a grading audit: criteria, Table 1, metrics, gap tests and TOST, fairness, reader ceiling, ROC, calibration, confusion.

Rendered from the results document alone (``grading_results.json``), so the report shows exactly the saved
numbers. Template ``audit/report/templates/grading.html.j2`` (jinja2, autoescape on).
"""

from __future__ import annotations

import logging
from typing import Any

import jinja2
import matplotlib.pyplot as plt
import pandas as pd

from audit.report.figures import MARKERS, OKABE_ITO, to_data_uri
from audit.report.labels import axis_label
from audit.stats.groups import INTERSECTION_SEP

logger = logging.getLogger(__name__)

__all__ = ["render_grading_report", "roc_figure", "calibration_figure"]

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("audit.report", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
#: Section anchors and titles of the grading report, in order (the segmentation report's order: criteria, Table 1, results).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Acceptance criteria"), ("criteria", "Decisive numbers"), ("cohort", "Table 1"), ("metrics", "Metrics"),
    ("gaps", "Differences and equivalence"), ("fairness", "Fairness"), ("readers", "Reader ceiling"), ("curves", "ROC and calibration"),
    ("confusion", "Confusion matrices"),
)  # fmt: skip
#: Row labels of the reader-ceiling table.
CEILING_LABELS = {"model_vs_consensus": "model vs readers' consensus", "reader_reader_mean": "reader vs reader (mean over pairs)",
                  "model_reader_mean": "model vs reader (mean over readers)", "shortfall": "shortfall (reader-reader minus model-reader)"}  # fmt: skip
_SUMMARY_METRICS = ("n_levels", "n_patients", "accuracy", "kappa_linear", "kappa_quadratic", "sensitivity_binary", "specificity_binary",
                    "ppv_binary", "npv_binary", "severe_sensitivity", "auroc_binary", "brier_binary", "rsna_weighted_log_loss")  # fmt: skip


def _by_group(curves: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The first fairness grouping's per-group curves (vendor in the demo), if any."""
    for name, groups in curves.get("by_group", {}).items():
        return name, groups
    return None


def roc_figure(curves: dict[str, Any], auroc: float | None) -> str:
    """ROC curves of the binarized (>= moderate) outcome, overall and per group, as a PNG data URI."""
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    points = pd.DataFrame(curves["roc"])
    ax.plot(points["fpr"], points["tpr"], color="black", linewidth=2, label=f"all (AUROC {auroc:.3f})" if auroc is not None else "all")
    split = _by_group(curves)
    if split:
        for i, (group, c) in enumerate(split[1].items()):
            g = pd.DataFrame(c["roc"])
            ax.plot(g["fpr"], g["tpr"], color=OKABE_ITO[i % len(OKABE_ITO)], linestyle=("-", "--", ":", "-.")[i % 4], linewidth=1, label=f"{split[0]} {group}")
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=">= moderate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return to_data_uri(fig)


def calibration_figure(curves: dict[str, Any]) -> str:
    """Reliability curves (observed share against mean predicted probability per bin), overall and per group."""
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=0.8, label="perfect calibration")
    b = pd.DataFrame(curves["reliability"])
    ax.plot(b["mean_predicted"], b["observed"], color="black", marker="o", linewidth=2, label="all")
    split = _by_group(curves)
    if split:
        for i, (group, c) in enumerate(split[1].items()):
            g = pd.DataFrame(c["reliability"])
            ax.plot(g["mean_predicted"], g["observed"], color=OKABE_ITO[i % len(OKABE_ITO)], marker=MARKERS[(i + 1) % len(MARKERS)], linewidth=1, label=f"{split[0]} {group}")
    ax.set(xlabel="mean predicted P(>= moderate)", ylabel="observed share", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=7)
    return to_data_uri(fig)


def _matrices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    labels = doc["scale"]["labels"]
    out = []
    conf = pd.DataFrame(doc["confusion"])
    for (breakdown, group), sub in conf.groupby(["breakdown", "group"], sort=False):
        grid = sub.pivot(index="grade_ref", columns="grade_model", values="count").reindex(index=range(len(labels)), columns=range(len(labels)), fill_value=0)
        out.append({"breakdown": breakdown, "group": group, "rows": [(labels[i], [int(v) for v in grid.loc[i]]) for i in grid.index]})
    return out


def render_grading_report(doc: dict[str, Any]) -> str:
    """The grading report HTML from a results document."""
    metrics = pd.DataFrame(doc["metrics"])
    wide = metrics[metrics["metric"].isin(_SUMMARY_METRICS)].pivot(index=["breakdown", "group"], columns="metric", values="value")
    wide = wide.reindex(pd.MultiIndex.from_frame(metrics[["breakdown", "group"]].drop_duplicates()))
    columns = [m for m in _SUMMARY_METRICS if m in wide.columns]
    summary = [{"breakdown": b, "group": g, "values": [wide.loc[(b, g), m] for m in columns]} for b, g in wide.index]
    overall = metrics[metrics["breakdown"] == "all"].set_index("metric")["value"]
    figures = {}
    if doc["curves"]:
        figures["roc"] = roc_figure(doc["curves"], overall.get("auroc_binary"))
        figures["calibration"] = calibration_figure(doc["curves"])
    matrices = _matrices(doc)
    crossed: dict[str, list[dict[str, Any]]] = {}
    for m in matrices:
        if INTERSECTION_SEP in m["breakdown"]:
            crossed.setdefault(m["breakdown"], []).append(m)
    table1: dict[str, list[dict[str, Any]]] = {}
    for row in doc.get("table1", []):
        table1.setdefault(row["axis"], []).append(row)
    sections = [(sid, title) for sid, title in SECTIONS if sid != "curves" or figures]
    return _ENV.get_template("grading.html.j2").render(
        doc=doc, summary_columns=columns, summary=summary, matrices=matrices, crossed_matrices=list(crossed.items()), figures=figures,
        sections=sections, descriptions={r["id"]: r["description"] for r in doc["criteria"]["rows"]}, table1=list(table1.items()),
        axis_label=axis_label, ceiling_labels=CEILING_LABELS,
    )  # fmt: skip
