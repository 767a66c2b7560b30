"""The new statistics reach results.json, the tables and the report of a real `spine-audit demo` run, and the
intersection heatmap hatches the groups below min_group_size."""

from __future__ import annotations

import json

import pandas as pd

from audit.report import validate_results
from audit.report.formatting import format_value


def test_demo_run_has_new_site_table_site_level_axes_and_labelled_populations(demo_run):
    run_dir, _ = demo_run
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert validate_results(results) == []
    stats = results["statistics"]
    new_site = pd.DataFrame(stats["new_site"])
    n_rows = len(results["metrics"]["structures"]) * len(results["metrics"]["names"])
    assert len(new_site) == n_rows and set(new_site["population"]) == {"a new site"}
    assert (pd.read_csv(run_dir / "tables" / "new_site.csv")["structure"].tolist()) == new_site["structure"].tolist()
    units = {row["axis"]: row["unit"] for row in stats["settings"]["axis_units"]}
    assert units["vendor"] == "site" and units["sex"] == "patient"  # vendor is a property of the demo's sites
    assert {r["population"] for r in stats["group_estimates"]} == {"these sites"}
    assert all("status_complete_case" in r for r in stats["acceptance"])
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "A new site: prediction interval" in html and "Overall performance (these sites)" in html
    first = new_site.iloc[0]
    assert format_value(first["pi_low"], first["metric"]) in html


def test_heatmap_hatches_only_the_cells_below_min_group_size(monkeypatch):
    from audit.report import figures

    drawn = []

    class Recorder(figures.Rectangle):
        def __init__(self, xy, *args, **kwargs):
            drawn.append(xy)
            super().__init__(xy, *args, **kwargs)

    monkeypatch.setattr(figures, "Rectangle", Recorder)
    estimates = pd.DataFrame([
        {"axis": "race x sex", "group": f"{r} x {s}", "structure": "disc", "metric": "dice", "mean": 0.8, "n_patients": n, "descriptive_only": n < 5}
        for (r, s, n) in [("A", "F", 12), ("A", "M", 2), ("B", "F", 9), ("B", "M", 1)]
    ])  # fmt: skip
    figures.intersection_heatmap(estimates, axis="race x sex", metric="dice", structures=["disc"])
    assert sorted(drawn) == [(0.5, -0.5), (0.5, 0.5)]  # column M (index 1) of rows A and B
