"""The demo report in headless Chromium at 1400 and 800 px: no horizontal overflow of the page, no console errors,
sorting, filtering and gallery enlargement work; `spine-audit report --pdf` prints a PDF. Skipped with the reason
when Chromium is not installed (CI installs it: .ci/run)."""

from __future__ import annotations

import math

import pytest
from report_browser import chromium_or_skip, probe_report
from typer.testing import CliRunner


def _number(text: str) -> float:
    if text in ("–", ""):
        return math.nan
    return 0.0005 if text == "<0.001" else float(text)


@pytest.fixture(scope="module")
def probes(demo_run, tmp_path_factory):
    chromium_or_skip()
    folder = tmp_path_factory.mktemp("browser")
    return {width: probe_report(demo_run[0] / "report.html", width, folder) for width in (1400, 800)}


@pytest.mark.parametrize("width", [1400, 800])
def test_no_horizontal_overflow_and_no_console_errors(probes, width):
    probe = probes[width]
    assert probe["errors"] == []
    assert probe["viewport"] == width
    assert probe["scrollWidth"] <= width and probe["bodyScrollWidth"] <= width, probe["wide"]
    assert probe["wide"] == []
    assert probe["zoomScrollWidth"] <= width  # an enlarged gallery image stays inside the page too


@pytest.mark.parametrize("width", [1400, 800])
def test_tables_sort_and_filter_and_gallery_enlarges(probes, width):
    probe = probes[width]
    column = [_number(t) for t in probe["sortedColumn"]]
    tested = [v for v in column if not math.isnan(v)]
    assert probe["sortState"] == "ascending" and len(tested) > 5
    assert tested == sorted(tested) and all(math.isnan(v) for v in column[len(tested):])  # untested rows ("–") last
    assert probe["filters"] > 3 and probe["filterShown"] and probe["filterHidden"] > 0
    assert all("intervertebral" in row.lower() for row in probe["filterShown"])
    assert probe["zoomed"] and probe["zoomGrowth"] > 1.5


def test_report_pdf_through_headless_chromium(demo_run, tmp_path):
    """`spine-audit report RUN --pdf` on a copy of the demo run folder: a PDF with every folded table opened."""
    import shutil

    from audit.cli import app

    chromium_or_skip()
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run, ignore=shutil.ignore_patterns("cohort", "predictions"))
    result = CliRunner().invoke(app, ["report", str(run), "--pdf"])
    assert result.exit_code == 0, result.output
    data = (run / "report.pdf").read_bytes()
    assert data[:5] == b"%PDF-" and data.count(b"/Type /Page") > 5


def test_the_probe_sees_overflow_and_script_errors(tmp_path):
    """Control: the same probe on a page with a 2,000 px wide table and a throwing script reports both."""
    chromium_or_skip()
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width"></head><body><main><section>'
                    '<table style="width:2000px"><tr><td>wide</td></tr></table></section></main>'
                    "<script>undefinedFunction();</script></body></html>", encoding="utf-8")  # fmt: skip
    probe = probe_report(page, 800, tmp_path / "probe")
    assert probe["scrollWidth"] > 800 and probe["wide"]
    assert any("undefinedFunction" in e for e in probe["errors"])


def test_pdf_without_chromium_names_the_package_and_exits_2(demo_run, tmp_path, monkeypatch):
    import shutil

    from audit.cli import app
    from audit.report import pdf

    monkeypatch.setattr(pdf.shutil, "which", lambda name: None)
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run, ignore=shutil.ignore_patterns("cohort", "predictions"))
    with pytest.raises(pdf.ChromiumNotFound, match=r"no headless Chromium found \(tried \['chromium'"):
        pdf.print_pdf(run / "report.html")
    result = CliRunner().invoke(app, ["report", str(run), "--pdf"])
    assert result.exit_code == 2 and "install the 'chromium' package" in " ".join(result.output.split()) and not (run / "report.pdf").exists()
