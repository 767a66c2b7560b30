"""Report figures, read back from the matplotlib figure before it becomes a PNG: n on every forest and box plot,
acceptance thresholds drawn, one x range per metric, hatched small heatmap cells, the participant-flow bars; and
the tables' reader-facing names (units, test names, unambiguous failure columns, ratios, no exponents)."""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from report_builders import synthetic_run

from audit.report import figures, render_report


@pytest.fixture
def captured(monkeypatch):
    """The figures passed to to_data_uri, kept open for inspection."""
    kept: list[plt.Figure] = []
    monkeypatch.setattr(figures, "to_data_uri", lambda fig: kept.append(fig) or "data:image/png;base64,")
    yield kept
    for fig in kept:
        plt.close(fig)


def estimates_two_axes() -> pd.DataFrame:
    """Group estimates of Dice for 2 structures on axes site (3 groups, one descriptive only) and sex, and a 2x2 intersection."""
    rows = []
    for axis, groups in (("site", {"A": 0.9, "B": 0.8, "C": 0.5}), ("sex", {"F": 0.85, "M": 0.86}), ("race x sex", {"W x F": 0.9, "W x M": 0.8, "B x F": 0.7, "B x M": 0.6})):
        for structure in ("vertebral_body", "spinal_cord"):
            for k, (g, mean) in enumerate(groups.items()):
                rows.append({"axis": axis, "group": g, "structure": structure, "metric": "dice", "mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05,
                             "n_patients": 10 + k, "descriptive_only": g in ("C", "B x M"), "is_reference": k == 0})  # fmt: skip
    return pd.DataFrame(rows)


def test_forest_plots_share_the_metric_range_and_show_n_and_thresholds(captured):
    est = estimates_two_axes()
    xlim = figures.metric_range([*est["ci_low"], *est["ci_high"], 0.8])
    thresholds = [(0.8, "criterion overall-dice", None), (0.75, "criterion disc", "spinal_cord")]
    for axis in ("site", "sex"):
        figures.forest_plot(est, axis=axis, metric="dice", structures=["vertebral_body", "spinal_cord"], margin=0.03, xlim=xlim, thresholds=thresholds)
    site, _ = captured
    panels = [ax for fig in captured for ax in fig.axes]
    assert {tuple(np.round(ax.get_xlim(), 9)) for ax in panels} == {tuple(np.round(xlim, 9))}  # one x range in every panel of both figures
    assert [t.get_text() for t in site.axes[0].get_yticklabels()] == ["A (n=10)", "B (n=11)", "C (n=12)"]
    lines = [[tuple(line.get_xdata()) for line in ax.get_lines() if line.get_color() == "#D55E00"] for ax in site.axes]
    assert lines == [[(0.8, 0.8)], [(0.8, 0.8), (0.75, 0.75)]]  # the structure-specific threshold only on its panel
    assert xlim[0] < 0.45 and xlim[1] > 0.95


def test_box_plots_show_n_and_the_failure_threshold(captured):
    cases = pd.DataFrame({"case_id": [f"c{i}" for i in range(7)], "vendor": ["GE"] * 3 + ["Philips"] * 4, "structure": "spinal_cord",
                          "metric": "dice", "value": [0.9, 0.8, 0.85, 0.5, 0.6, 0.65, 0.7], "status": "ok"})  # fmt: skip
    figures.distribution_plot(cases, by="vendor", metric="dice", structures=["spinal_cord"], ylim=(0.0, 1.0), thresholds=[(0.7, "failure threshold 0.7", None)])
    ax = captured[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["GE\nn=3", "Philips\nn=4"]
    assert ax.get_ylim() == (0.0, 1.0) and [tuple(line.get_ydata()) for line in ax.get_lines() if line.get_color() == "#D55E00"] == [(0.7, 0.7)]


def test_heatmap_hatches_exactly_the_cells_below_the_minimum_size(captured):
    figures.intersection_heatmap(estimates_two_axes(), axis="race x sex", metric="dice", structures=["vertebral_body", "spinal_cord"])
    hatched = [[(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()] for ax in captured[0].axes[:2]]
    assert hatched == [[(1.0, 0.0)], [(1.0, 0.0)]]  # rows B, W; columns F, M: "B x M" is the descriptive-only cell


def test_flow_plot_bars_add_up_to_the_cases_found(captured):
    flow = [{"site": "a", "found": 5, "excluded": 1, "failed": 1, "analysed": 3}, {"site": "all", "found": 5, "excluded": 1, "failed": 1, "analysed": 3}]
    figures.flow_plot(flow)
    ax = captured[0].axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [3, 1, 1] and [t.get_text() for t in ax.get_yticklabels()] == ["a (found 5)"]


def test_tables_use_unambiguous_names_units_friendly_tests_and_no_exponents(tmp_path):
    run = synthetic_run(tmp_path / "run", n_cases=24, images=1)
    html = render_report(run).read_text(encoding="utf-8")
    headers = set(re.findall(r"<th[^>]*>([^<]+)</th>", html))
    assert {"pipeline failures (cases)", "share of cases beyond the metric threshold", "CI of that share", "ratio (group / reference)", "CI of ratio",
            "difference (group − reference)"} <= headers  # fmt: skip
    assert not headers & {"failed", "failure rate"}
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert "HD95 (mm)" in cells and "hd95" not in cells
    assert "Welch t-test" in html and not re.search(r'<td class="small">(welch|mann_whitney)</td>', html)
    numbers = re.findall(r'<span class="num"[^>]*>([^<]*)</span>', html)
    assert numbers and not [t for t in numbers if re.search(r"\d[eE][-+]?\d", t)]
    results = json.loads((run / "results.json").read_text())
    shown = {(a, f) for a, f in re.findall(r'data-src="statistics\.(gaps|group_estimates)" data-row="\d+" data-field="(ratio|failure_ci_low)"', html)}
    assert shown == {("gaps", "ratio"), ("group_estimates", "failure_ci_low")} and results["statistics"]["gaps"]
