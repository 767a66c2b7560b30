"""Report figures (matplotlib, Agg backend), returned as PNG data URIs so the HTML stays self-contained.

Colour-blind-safe Okabe-Ito palette; every encoding also differs without colour (marker shape, line
style, filled versus hollow, text labels).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
import numpy as np
import pandas as pd

from audit.records import EVALUABLE_STATUSES

logger = logging.getLogger(__name__)

__all__ = ["MARKERS", "OKABE_ITO", "distribution_plot", "forest_plot", "intersection_heatmap", "to_data_uri"]

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P")
DPI = 90


def to_data_uri(fig: plt.Figure) -> str:
    """Render a figure to a base64 PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def forest_plot(estimates: pd.DataFrame, *, axis: str, metric: str, structures: Sequence[str], margin: float | None) -> str:
    """Group means with CIs, one panel per structure; dashed line = reference group, band = +/- margin.

    Hollow markers mark descriptive-only groups (fewer patients than the protocol's minimum).
    """
    sub = estimates[(estimates["axis"] == axis) & (estimates["metric"] == metric)]
    groups = sorted(sub["group"].unique())
    fig, panels = plt.subplots(1, len(structures), figsize=(3.2 * len(structures), 0.42 * len(groups) + 1.3), sharey=True, squeeze=False)
    for i, (ax, structure) in enumerate(zip(panels[0], structures)):
        s = sub[sub["structure"] == structure].set_index("group").reindex(groups)
        y = np.arange(len(groups))
        colour, marker = OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]
        ref = s[s["is_reference"].fillna(False).astype(bool)]
        if len(ref):
            ref_mean = float(ref["mean"].iloc[0])
            if margin:
                ax.axvspan(ref_mean - margin, ref_mean + margin, color="0.88", zorder=0, label=f"±{margin:g} margin")
            ax.axvline(ref_mean, color="0.3", linestyle="--", linewidth=1, label=f"reference ({ref.index[0]})")
        for yi, (group, row) in zip(y, s.iterrows()):
            if not np.isfinite(row["mean"]):
                continue
            hollow = bool(row["descriptive_only"])
            ax.plot([row["ci_low"], row["ci_high"]], [yi, yi], color=colour, linewidth=1.6, linestyle=":" if hollow else "-")
            ax.plot(row["mean"], yi, marker=marker, color=colour, markerfacecolor="white" if hollow else colour, markersize=6)
        ax.set_title(structure.replace("_", " "), fontsize=9)
        ax.set_xlabel(metric, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", color="0.92")
    panels[0][0].set_yticks(np.arange(len(groups)), [f"{g}" for g in groups])
    panels[0][0].invert_yaxis()
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{metric} by {axis} (mean and CI; hollow = descriptive only)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return to_data_uri(fig)


def distribution_plot(cases: pd.DataFrame, *, by: str, metric: str, structures: Sequence[str]) -> str:
    """Box plots of the per-case metric by a column, one panel per structure, cases drawn as points."""
    sub = cases[(cases["metric"] == metric) & cases["status"].isin(EVALUABLE_STATUSES) & np.isfinite(cases["value"])]
    groups = sorted(sub[by].astype(str).unique())
    fig, panels = plt.subplots(1, len(structures), figsize=(3.2 * len(structures), 2.8), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for i, (ax, structure) in enumerate(zip(panels[0], structures)):
        data = [sub.loc[(sub["structure"] == structure) & (sub[by].astype(str) == g), "value"].to_numpy() for g in groups]
        ax.boxplot(data, tick_labels=groups, widths=0.55, showfliers=False, medianprops={"color": "black"})
        for j, values in enumerate(data):
            ax.scatter(j + 1 + rng.uniform(-0.15, 0.15, values.size), values, s=9, color=OKABE_ITO[j % len(OKABE_ITO)],
                       marker=MARKERS[j % len(MARKERS)], alpha=0.7, linewidths=0)  # fmt: skip
        ax.set_title(structure.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=8, axis="x", rotation=20)
        ax.grid(axis="y", color="0.92")
    panels[0][0].set_ylabel(metric, fontsize=8)
    fig.suptitle(f"{metric} per case by {by}", fontsize=10)
    fig.tight_layout()
    return to_data_uri(fig)


def intersection_heatmap(estimates: pd.DataFrame, *, axis: str, metric: str, structures: Sequence[str], separator: str = " x ") -> str:
    """Mean metric for each cell of a two-way intersection; each cell also prints its value and patient count."""
    sub = estimates[(estimates["axis"] == axis) & (estimates["metric"] == metric)].copy()
    parts = sub["group"].str.split(separator, n=1, expand=True)
    sub["row"], sub["col"] = parts[0], parts[1]
    rows, cols = sorted(sub["row"].unique()), sorted(sub["col"].unique())
    fig, panels = plt.subplots(
        1, len(structures), figsize=(2.2 + 1.1 * len(cols) * len(structures), 0.45 * len(rows) + 1.6), squeeze=False, layout="constrained"
    )
    finite = sub["mean"][np.isfinite(sub["mean"])]
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    image = None
    for ax, structure in zip(panels[0], structures):
        s = sub[sub["structure"] == structure]
        grid = s.pivot(index="row", columns="col", values="mean").reindex(index=rows, columns=cols)
        counts = s.pivot(index="row", columns="col", values="n_patients").reindex(index=rows, columns=cols)
        small = s.pivot(index="row", columns="col", values="descriptive_only").reindex(index=rows, columns=cols) if "descriptive_only" in s else None
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="cividis", vmin=vmin, vmax=vmax, aspect="auto")
        for (r, c), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            n = counts.iat[r, c]
            if small is not None and np.isfinite(value) and bool(small.iat[r, c] is True or small.iat[r, c] == 1):
                # below min_group_size: hatched and labelled, so a tiny cell's colour is not read as a finding
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.85", linewidth=0))
                ax.text(c, r, f"{value:.3f}\nn={int(n)}\nnot tested", ha="center", va="center", fontsize=6, color="white" if value < (vmin + vmax) / 2 else "black")
            elif np.isfinite(value):
                ax.text(c, r, f"{value:.3f}\nn={int(n)}", ha="center", va="center", fontsize=7, color="white" if value < (vmin + vmax) / 2 else "black")
            else:
                ax.text(c, r, "no cases", ha="center", va="center", fontsize=6, color="0.4")
        ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=30)
        ax.set_yticks(range(len(rows)), rows if ax is panels[0][0] else [""] * len(rows), fontsize=7)
        ax.set_title(structure.replace("_", " "), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(panels[0]), shrink=0.8, label=metric)
    fig.suptitle(f"{metric} by {axis} (n = patients; hatched: below min_group_size, not tested)", fontsize=10)
    return to_data_uri(fig)


