"""report.html from a synthetic run folder (tests/report/report_builders.py): numbers, keys, escaping,
self-containment, sections, gallery, schema, tables, a headless browser and the 1,000-case size bound."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from report_builders import LEAKY_DIR, synthetic_run
from report_html_helpers import ReportParser, expected_text, span_text_expected

import audit.report
from audit.report import render_report, validate_results, write_tables

EVIL = "<script>alert(1)</script>"
SECTIONS = ("findings", "summary", "study", "flow", "cohort", "overall", "subgroups", "gaps", "adjusted", "equivalence", "gallery", "quality", "methods",
            "checklist", "provenance", "limitations")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = synthetic_run(tmp_path_factory.mktemp("synthetic") / "run")
    render_report(run)
    return run


@pytest.fixture(scope="module")
def parsed(run):
    parser = ReportParser()
    parser.feed((run / "report.html").read_text(encoding="utf-8"))
    return json.loads((run / "results.json").read_text()), parser


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """The same synthetic run with results.json statistics from the real audit.stats.analyze."""
    run = synthetic_run(tmp_path_factory.mktemp("analyzed") / "run", statistics="analyze")
    parser = ReportParser()
    parser.feed(render_report(run).read_text(encoding="utf-8"))
    return json.loads((run / "results.json").read_text()), parser


def test_numbers_from_real_analyze_output_equal_their_rows(analyzed):
    results, parser = analyzed
    assert validate_results(results) == []
    assert len(parser.spans) > 1000
    for attrs, text in parser.spans:
        assert text == span_text_expected(results, attrs), attrs
    shown = {(a["data-src"], int(a["data-row"]), a["data-field"]) for a, _ in parser.spans if "data-row" in a}
    for source in ("group_estimates", "gaps", "equivalence", "adjusted", "acceptance"):
        rows = results["statistics"][source]
        assert rows, source
        field = {"group_estimates": "mean", "gaps": "p_holm", "equivalence": "p_tost", "adjusted": "estimate", "acceptance": "value"}[source]
        assert all((f"statistics.{source}", i, field) in shown for i in range(len(rows))), source


def test_every_number_shown_equals_its_results_json_row(parsed):
    results, parser = parsed
    assert len(parser.spans) > 1000
    kinds = set()
    for attrs, text in parser.spans:
        kinds.add(attrs["data-kind"])
        assert text == span_text_expected(results, attrs), attrs
    assert {"count", "percent", "dice", "hd95", "nsd_2mm", "p", "effect", "failure_rate", "ratio"} <= kinds
    sources = {a["data-src"] for a, _ in parser.spans}
    assert {"cohort.flow", "data", "study.overlap", "statistics.settings.family_sizes"} <= sources  # the new numbers are tagged too
    assert any(a.get("data-scale") == "-1" for a, _ in parser.spans)  # a key finding's decrease written as "lower"
    shown = {t for _, t in parser.spans}
    assert {"∞", "–", "<0.001"} <= shown  # the planted edge values reach the page


def test_every_estimate_gap_and_criterion_is_shown(parsed):
    results, parser = parsed
    shown = {(a["data-src"], int(a["data-row"]), a["data-field"]) for a, _ in parser.spans if "data-row" in a}
    for source, field in (("statistics.group_estimates", "mean"), ("statistics.overall", "ci_low"), ("statistics.gaps", "p_holm"), ("statistics.gaps", "p_fdr_bh"),
                          ("statistics.equivalence", "p_tost"), ("statistics.adjusted", "estimate"), ("statistics.acceptance", "value"),
                          ("cohort.table1", "n_cases"), ("harmonization.metadata_completeness", "unknown")):  # fmt: skip
        node = results
        for key in source.split("."):
            node = node[key]
        missing = [i for i in range(len(node)) if (source, i, field) not in shown]
        assert missing == [], (source, field, missing[:5])


def test_sections_and_acceptance_outcomes(run, parsed):
    _, parser = parsed
    assert set(SECTIONS) <= set(parser.ids)
    html = (run / "report.html").read_text()
    statuses = re.findall(r'<span class="status (\w+)" data-criterion="([^"]+)">', html)
    assert {c: s for s, c in statuses} == {"overall-dice": "fail", "site-hd95": "inconclusive"}
    assert html.index('data-criterion="overall-dice"') < html.index('data-criterion="site-hd95"')  # failures first
    words = re.findall(r'<span class="status (\w+)"[^>]*>(\w+)</span>', html)
    assert words and all(word == status.upper() for status, word in words)  # readable without colour: the word is printed


def expected_worst(run: Path, axis: str, per_group: int = 2) -> dict[str, str]:
    """case id -> mean Dice (3 decimals) of the ``per_group`` worst cases of each ``axis`` group, from the CSVs."""
    metrics = pd.read_csv(run / "metrics.csv")
    manifest = pd.read_csv(run / "manifest.csv")
    dice = metrics[(metrics.metric == "dice") & metrics.status.isin(["ok", "missed", "false_positive"])]
    per_case = dice.groupby("case_id")["value"].mean().rename("mean").reset_index().merge(manifest[["case_id", axis]])
    worst = per_case.sort_values(["mean", "case_id"]).groupby(axis).head(per_group)
    return {c: f"{v:.3f}" for c, v in zip(worst["case_id"], worst["mean"])}


def test_gallery_shows_the_worst_cases_per_site(run, parsed):
    _, parser = parsed
    shown = {a["data-case-id"]: t for a, t in parser.case_values if a["data-axis"] == "site" and "data-structure" not in a}
    assert shown == expected_worst(run, "site")  # worst_cases_per_group = 2; gallery_axes defaults to [site]
    assert {a["data-axis"] for a, _ in parser.case_values} == {"site"}
    # each caption also gives the case's Dice per structure, read here from metrics.csv
    metrics = pd.read_csv(run / "metrics.csv")
    dice = metrics[(metrics.metric == "dice") & metrics.status.isin(["ok", "missed", "false_positive"])].set_index(["case_id", "structure"])["value"]
    per_structure = {(a["data-case-id"], a["data-structure"]): t for a, t in parser.case_values if "data-structure" in a}
    assert {c for c, _ in per_structure} == set(shown)
    assert per_structure == {(c, s): f"{dice[(c, s)]:.3f}" for c in shown for s in ("vertebral_body", "intervertebral_disc", "spinal_canal", "spinal_cord")}
    assert len(re.findall(r'<img alt="case ', (run / "report.html").read_text())) == len(shown)


def test_gallery_per_group_of_several_axes(tmp_path):
    run = synthetic_run(tmp_path / "run", gallery_axes=["site", "vendor"], images=3)
    parser = ReportParser()
    parser.feed(render_report(run).read_text(encoding="utf-8"))
    for axis in ("site", "vendor"):
        shown = {a["data-case-id"]: t for a, t in parser.case_values if a["data-axis"] == axis and "data-structure" not in a}
        assert shown == expected_worst(run, axis), axis
    html = (run / "report.html").read_text()
    assert "<h3>By site</h3>" in html and "<h3>By vendor</h3>" in html
    assert len(re.findall(r'<img alt="case ', html)) == len([a for a, _ in parser.case_values if "data-structure" not in a])


def test_data_quality_per_site_recomputed_from_results_json(parsed):
    results, parser = parsed
    shown = {(a["data-site"], a["data-field"]): (a["data-kind"], t) for a, t in parser.derived}
    sites = sorted(r["group"] for r in results["cohort"]["table1"] if r["axis"] == "site")
    assert sorted({site for site, _ in shown}) == sites
    for site in sites:
        cells = [c for c in results["harmonization"]["metadata_completeness"] if c["site"] == site]
        known, unknown = sum(c["known"] for c in cells), sum(c["unknown"] for c in cells)
        expected = {
            "failed": len({f["case_id"] for f in results["failures"] if f["site"] == site}),
            "warned": sum(w["n_cases"] for w in results["harmonization"]["warnings"] if w["site"] == site),
            "unknown": unknown,
            "complete": 100.0 * known / (known + unknown),
        }
        for field, value in expected.items():
            kind, text = shown[(site, field)]
            assert text == expected_text(value, kind), (site, field)
    assert shown[("site-A", "failed")][1] == "1" and shown[("site-B", "failed")][1] == "0"  # the builder fails one site-A case


def test_identifying_folders_in_error_messages_are_not_shown(run):
    html = (run / "report.html").read_text()
    assert LEAKY_DIR in (run / "failures.csv").read_text()  # planted by the builder
    assert LEAKY_DIR not in html and "DOE_JOHN" not in html
    assert "corrupt image …/img.nii.gz" in html


def test_report_is_self_contained(run, parsed):
    _, parser = parsed
    html = (run / "report.html").read_text()
    assert [link for link in parser.links if not link.startswith(("data:", "#"))] == []
    assert not re.search(r"(?i)(src|href)\s*=\s*['\"]?\s*(https?:)?//", html)
    assert not re.search(r"(?i)@import|url\(\s*['\"]?\s*(https?:)?//|<link\b|<iframe|<object", html)
    # one inline script, the package's own file verbatim, with no way to reach the network or run strings as code
    scripts = re.findall(r"(?is)<script([^>]*)>(.*?)</script>", html)
    packaged = (Path(audit.report.__file__).parent / "templates" / "report.js").read_text(encoding="utf-8")
    assert len(scripts) == 1 and scripts[0][0] == "" and scripts[0][1].strip() == packaged.strip()
    assert not re.search(r"fetch|XMLHttpRequest|WebSocket|sendBeacon|import\s*\(|eval|Function\(|https?:|innerHTML|document\.write", packaged)


def test_site_supplied_strings_are_escaped(run, tmp_path):
    evil_run = tmp_path / "evil"
    shutil.copytree(run, evil_run)
    for name in ("manifest.csv", "failures.csv"):
        table = pd.read_csv(evil_run / name)
        table["site"] = table["site"].replace({"site-A": EVIL})
        table.to_csv(evil_run / name, index=False)
    text = (evil_run / "results.json").read_text().replace('"site-A', json.dumps(EVIL)[:-1])  # every site-A string
    results = json.loads(text)
    results["harmonization"]["warnings"][0]["warning"] = EVIL
    results["failures"][0]["error"] = EVIL
    del results["statistics"]["criteria"]  # also: without the summary map the statuses come from the rows (worst wins)
    (evil_run / "results.json").write_text(json.dumps(results))
    html = render_report(evil_run).read_text()
    statuses = dict(re.findall(r'<span class="status \w+" data-criterion="([^"]+)">(\w+)</span>', html))
    assert statuses == {"overall-dice": "FAIL", "site-hd95": "INCONCLUSIVE"}
    assert EVIL not in html and html.count("<script") == 1  # only the packaged inline script
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 10
    parser = ReportParser()
    parser.feed(html)
    assert any(a.get("data-group") == EVIL for a, _ in parser.spans)  # attributes escaped too, and parse back


def test_results_schema_check_names_the_problems(parsed):
    results, _ = parsed
    assert validate_results(results) == []
    broken = copy.deepcopy(results)
    del broken["statistics"]["gaps"][0]["p_holm"]
    broken["statistics"]["acceptance"][0]["status"] = "maybe"
    broken["protocol_sha256"] = "xyz"
    broken["schema_version"] = "2.0"
    del broken["run"]
    problems = validate_results(broken)
    assert any("statistics.gaps[0] lacks fields ['p_holm']" in p for p in problems)
    assert any("acceptance[0].status" in p and "'maybe'" in p for p in problems)
    assert any("protocol_sha256 is not a sha256" in p for p in problems)
    assert any("schema_version '2.0'" in p for p in problems)
    assert "results.json: missing run" in problems


def test_write_tables_round_trips_csv_and_parquet(tmp_path):
    table = pd.DataFrame({"axis": ["site", "site"], "group": ["A", None], "mean": [0.5, float("inf")], "n": [3, 4], "flag": [True, False]})
    written = write_tables(tmp_path, {"group_estimates": table})
    assert {p.name for p in written} == {"group_estimates.csv", "group_estimates.parquet"}
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tables" / "group_estimates.csv"), table, check_dtype=False)
    back = pd.read_parquet(tmp_path / "tables" / "group_estimates.parquet")
    assert back["mean"].tolist() == [0.5, float("inf")] and back["group"].isna().tolist() == [False, True]


def test_headless_chromium_screenshot(run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); the browser check needs it")
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
           (run / "report.html").as_uri()]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, timeout=60)
    assert shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1280 and len(data) > 100_000


def test_report_for_1000_cases_stays_under_10_mb_with_bounded_figures(tmp_path):
    run = synthetic_run(tmp_path / "big", n_cases=1000, images=3)
    html = render_report(run).read_text()
    size = len(html.encode("utf-8"))
    images = len(re.findall(r"<img ", html))
    assert size < 10 * 1024 * 1024, size
    assert images <= 6 + 2 + 1 + 1 + 3 * 2  # forest per axis + 2 distributions + 1 heatmap + flow + sites x worst_cases_per_group


def test_intersection_gaps_are_folded_and_single_axis_gaps_shown(run, parsed):
    """The primary metric's gaps for single axes are visible; the (many) intersection rows sit in a folded
    <details> whose summary counts them and their significant rows, recounted here from results.json."""
    results, _ = parsed
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<h2 id="gaps">') : html.index('<h2 id="adjusted">')]
    visible, _, folded = section.partition("<details>")
    crossed_block = folded[: folded.index("</details>")]
    primary = results["protocol"]["statistics"]["primary_metric"]
    rows = [r for r in results["statistics"]["gaps"] if r["metric"] == primary]
    crossed = [r for r in rows if " x " in r["axis"]]
    assert crossed and len(crossed) < len(rows)
    assert re.findall(r'data-field="difference"[^>]*data-axis="([^"]+)"', visible) == [r["axis"] for r in rows if " x " not in r["axis"]]
    assert re.findall(r'data-field="difference"[^>]*data-axis="([^"]+)"', crossed_block) == [r["axis"] for r in crossed]
    n_sig = sum(bool(r["significant"]) for r in crossed)
    assert f"{len(crossed)} rows, {n_sig} significant</summary>" in crossed_block
