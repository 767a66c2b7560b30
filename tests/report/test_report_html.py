"""report.html rendered from real `audit.stats.analyze` output (the shared `spine-audit demo` run): every displayed
number equals its results.json row, nothing external, escaping. The synthetic-run tests (test_report_synthetic.py)
cover the browser screenshot and the 1,000-case size bound."""

from __future__ import annotations

import json
import re

import pytest
from report_html_helpers import ReportParser, expected_text, find_row, span_text_expected

from audit.report import format_value, validate_results


def lookup(results: dict, source: str, row: int, field: str):
    node = results
    for key in source.split("."):
        node = node[key]
    return node[row][field]


@pytest.fixture(scope="module")
def parsed(demo_run):
    run = demo_run[0]
    results = json.loads((run / "results.json").read_text())
    parser = ReportParser()
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
        by_key = find_row(results, attrs)[attrs["data-field"]]
        if "data-row" in attrs:
            by_index = lookup(results, attrs["data-src"], int(attrs["data-row"]), attrs["data-field"])
            assert by_index is by_key or by_index == by_key, attrs
        assert text == span_text_expected(results, attrs), attrs
    scales = {a.get("data-scale") for a, _ in parser.spans}
    assert "10" in scales  # the age slope per decade of the key findings is checked like every other number


def test_every_group_estimate_and_acceptance_row_is_shown(parsed):
    results, parser = parsed
    shown = {(a["data-src"], int(a["data-row"]), a["data-field"]) for a, _ in parser.spans if "data-row" in a}
    for i in range(len(results["statistics"]["group_estimates"])):
        assert ("statistics.group_estimates", i, "mean") in shown
    for i in range(len(results["statistics"]["acceptance"])):
        assert ("statistics.acceptance", i, "value") in shown
    for i in range(len(results["cohort"]["table1"])):
        assert ("cohort.table1", i, "n_cases") in shown


def test_report_is_self_contained(parsed, demo_run):
    _, parser = parsed
    html = (demo_run[0] / "report.html").read_text()
    external = [link for link in parser.links if not link.startswith(("data:", "#"))]
    assert external == []
    assert not re.search(r"(?i)@import|url\(\s*['\"]?https?:|<script[^>]*\bsrc|<link\b", html)
    assert html.count("<script") == 1  # the one inline table/gallery script


@pytest.mark.parametrize(("value", "kind", "shown"), [
    (0.91234, "dice", "0.912"), (3.456, "hd95", "3.46"), (12.345, "percent", "12.3"), (None, "dice", "–"), ("inf", "hd95", "∞"),
    (float("nan"), "assd", "–"), (0.0004, "p", "<0.001"), (0.0, "p", "<0.001"), (7, "count", "7"), (0.5, "nsd_2mm", "0.500"),
    (1, "dice", "1.000"), (0.0004, "dice", "0.000"), ("-inf", "effect", "-∞"), (None, "count", "–"), (-0.02287, "effect", "-0.0229"), (-0.001757, "effect", "-0.00176"), (1.23e-5, "effect", "0.0000123"), (12345.6, "effect", "12300"),
    (-1.2e-10, "effect", "-0.00000000"),
    (12, "", "12"), (2.0, "seconds", "2.00"),
], ids=["dice", "mm", "percent", "none", "inf", "nan", "tiny-p", "zero-p", "count", "nsd", "int-dice", "tiny-dice", "-inf", "none-count",
        "effect", "effect-slope", "effect-no-exponent", "effect-large", "effect-below-8-decimals", "bare-int", "seconds"])  # fmt: skip
def test_format_rule(value, kind, shown):
    assert format_value(value, kind) == shown


def test_effect_format_never_uses_an_exponent_and_agrees_with_exact_decimal_rounding():
    """20,000 seeded values over 16 orders of magnitude: audit's effect format equals the helper's independent
    decimal.Decimal rounding (3 significant digits, at most 8 decimals) and never writes an exponent."""
    import random

    rng = random.Random(20261203)
    for _ in range(20_000):
        value = rng.uniform(-1, 1) * 10 ** rng.uniform(-10, 6)
        shown = format_value(value, "effect")
        assert "e" not in shown.lower() and shown == expected_text(value, "effect"), value
