"""report.html: every displayed number equals results.json, nothing external, escaping, a real browser, size."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from audit.report import format_value, render_report, validate_results


class NumberSpans(HTMLParser):
    """Collects (attributes, text) of every <span class="num"> and every src/href value."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[dict, str]] = []
        self.links: list[str] = []
        self._open: dict | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "span" and a.get("class") == "num":
            self._open, self._text = a, ""

    def handle_data(self, data):
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append((self._open, self._text))
            self._open = None


def lookup(results: dict, source: str, row: int, field: str):
    node = results
    for key in source.split("."):
        node = node[key]
    return node[row][field]


@pytest.fixture(scope="module")
def parsed(demo_run):
    run = demo_run[0]
    results = json.loads((run / "results.json").read_text())
    parser = NumberSpans()
    parser.feed((run / "report.html").read_text())
    return results, parser


def test_results_json_follows_its_schema(parsed):
    results, _ = parsed
    assert validate_results(results) == []
    assert validate_results({"schema_version": "0.9"})[:2] == ["results.json: missing tool", "results.json: missing tool.version"]


def test_every_number_shown_equals_results_json(parsed):
    results, parser = parsed
    assert len(parser.spans) > 300
    for attrs, text in parser.spans:
        expected = format_value(lookup(results, attrs["data-src"], int(attrs["data-row"]), attrs["data-field"]), attrs["data-kind"])
        assert text == expected, (attrs, text, expected)


def test_every_group_estimate_and_acceptance_row_is_shown(parsed):
    results, parser = parsed
    shown = {(a["data-src"], int(a["data-row"]), a["data-field"]) for a, _ in parser.spans}
    for i in range(len(results["statistics"]["group_estimates"])):
        assert ("statistics.group_estimates", i, "mean") in shown
    for i in range(len(results["statistics"]["acceptance"])):
        assert ("statistics.acceptance", i, "value") in shown
    for i in range(len(results["cohort"]["table1"])):
        assert ("cohort.table1", i, "n_cases") in shown


def test_report_is_self_contained(parsed, demo_run):
    _, parser = parsed
    html = (demo_run[0] / "report.html").read_text()
    external = [link for link in parser.links if not (link.startswith("data:") or link.startswith("#"))]
    assert external == []
    assert not re.search(r"(?i)@import|url\(\s*['\"]?https?:|<script|<link\b", html)


@pytest.mark.parametrize(("value", "kind", "shown"), [
    (0.91234, "dice", "0.912"), (3.456, "hd95", "3.46"), (12.345, "percent", "12.3"), (None, "dice", "–"), ("inf", "hd95", "∞"),
    (float("nan"), "assd", "–"), (0.0004, "p", "<0.001"), (7, "count", "7"), (0.5, "nsd_2mm", "0.500"),
], ids=["dice", "mm", "percent", "none", "inf", "nan", "tiny-p", "count", "nsd"])  # fmt: skip
def test_format_rule(value, kind, shown):
    assert format_value(value, kind) == shown


def test_site_strings_are_escaped(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run, ignore=shutil.ignore_patterns("cohort"))
    evil = "<script>alert(1)</script>"
    results = json.loads((run / "results.json").read_text())
    for row in results["statistics"]["group_estimates"]:
        if row["axis"] == "site" and row["group"] == "site-A":
            row["group"] = evil
    results["failures"] = [{"case_id": "x", "site": evil, "stage": "adapter", "error_type": "E", "error": evil}]
    (run / "results.json").write_text(json.dumps(results))
    manifest = pd.read_csv(run / "manifest.csv")
    manifest["site"] = manifest["site"].replace({"site-A": evil})
    manifest.to_csv(run / "manifest.csv", index=False)
    html = render_report(run).read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_headless_chromium_renders_a_screenshot(demo_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           (demo_run[0] / "report.html").as_uri()]  # fmt: skip
    subprocess.run(cmd, check=False, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 50_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_for_1000_cases_stays_under_10_mb(demo_run, tmp_path):
    """Scale the demo's per-case tables to 1,000 cases (new ids, same images) and re-run stats and report."""
    from audit.metrics import metric_spec
    from audit.protocol import load_protocol
    from audit.provenance import dumps
    from audit.stats import add_age_band, analyze

    run = tmp_path / "big"
    shutil.copytree(demo_run[0], run, ignore=shutil.ignore_patterns("cohort", "predictions"))
    manifest = pd.read_csv(demo_run[0] / "manifest.csv")
    metrics = pd.read_csv(demo_run[0] / "metrics.csv")
    reps = -(-1000 // len(manifest))
    big_manifest = pd.concat([manifest.assign(case_id=manifest["case_id"] + f"#{i}", patient_id=manifest["patient_id"].astype(str) + f"#{i}") for i in range(reps)]).head(1000)
    big_metrics = pd.concat([metrics.assign(case_id=metrics["case_id"] + f"#{i}") for i in range(reps)])
    big_metrics = big_metrics[big_metrics["case_id"].isin(big_manifest["case_id"])]
    big_manifest.to_csv(run / "manifest.csv", index=False)
    big_metrics.to_csv(run / "metrics.csv", index=False)
    results = json.loads((run / "results.json").read_text())
    protocol = load_protocol(Path(__file__).resolve().parents[2] / "protocols" / "demo.yaml")
    names = results["metrics"]["names"]
    analysis = add_age_band(big_metrics.merge(big_manifest, on="case_id"), protocol.subgroups.age_bands)
    stats = analyze(analysis, structures=protocol.structures, metrics=names, subgroups=protocol.subgroups, statistics=protocol.statistics,
                    acceptance=protocol.acceptance, higher_is_better={m: metric_spec(m).higher_is_better for m in names})  # fmt: skip
    results["statistics"] = stats.to_dict()
    results["data"]["n_cases"] = 1000
    (run / "results.json").write_text(dumps(results))
    size = render_report(run).stat().st_size
    assert size < 10 * 1024 * 1024, size
