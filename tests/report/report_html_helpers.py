"""Helpers shared by the report tests: an independent re-implementation of the documented number format,
an HTML parser collecting the tagged numbers, and a look-up of a number's row by its key attributes."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from html.parser import HTMLParser


def expected_text(value, kind: str, scale: float | None = None) -> str:
    """The documented number format (docs/report.md, "Number format"), written again independently of audit.report;
    ``scale`` (the span's ``data-scale``) multiplies the stored value first (age per decade: 10)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value in ("inf", "-inf") or (isinstance(value, float) and math.isinf(value)):
        return "∞" if value in ("inf", math.inf) else "-∞"
    if scale is not None:
        value = value * scale
    if kind == "count":
        return f"{round(value):d}"
    if kind == "p" and 0 <= value < 0.001:
        return "<0.001"
    if kind == "effect":  # 3 significant digits in positional notation (exact decimal arithmetic), at most 8 decimals
        if value == 0:
            return "0.00"
        exact = Decimal(value)
        rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), ROUND_HALF_EVEN)
        if rounded.adjusted() != exact.adjusted():  # 9.996 -> 10.0: one digit fewer after the point
            rounded = exact.quantize(Decimal(1).scaleb(rounded.adjusted() - 2), ROUND_HALF_EVEN)
        return f"{value:.8f}" if rounded.as_tuple().exponent < -8 else format(rounded, "f")
    digits = {"dice": 3, "iou": 3, "nsd_2mm": 3, "failure_rate": 3, "ratio": 3, "p": 3, "percent": 1}.get(kind, 2)
    return f"{value:.{digits}f}"


class ReportParser(HTMLParser):
    """Number spans (attributes, text), gallery values, per-site derived counts, section ids and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[dict, str]] = []
        self.case_values: list[tuple[dict, str]] = []
        self.derived: list[tuple[dict, str]] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self._open: tuple[list, dict] | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "span" and a.get("class") in ("num", "casevalue", "derived"):
            target = {"num": self.spans, "casevalue": self.case_values, "derived": self.derived}[a["class"]]
            self._open, self._text = (target, a), ""

    def handle_data(self, data):
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self._open[0].append((self._open[1], self._text))
            self._open = None


def find_row(results: dict, attrs: dict) -> dict:
    """The one record of ``data-src`` whose key fields equal the span's data-* attributes (found by key, not by index)."""
    node = results
    for key in attrs["data-src"].split("."):
        node = node[key]
    if "data-row" not in attrs:  # a field of a mapping (data.n_cases, study.overlap, ...)
        assert isinstance(node, dict), attrs
        return node
    skip = {"class", "data-src", "data-row", "data-field", "data-kind", "data-scale"}
    keys = {k[5:].replace("-", "_"): v for k, v in attrs.items() if k not in skip}
    matches = [r for r in node if all(str(r.get(k)) == v for k, v in keys.items())]
    assert len(matches) == 1, (attrs, len(matches))
    return matches[0]


def span_text_expected(results: dict, attrs: dict) -> str:
    """What a number span must show: its row found by key, its field, formatted with its kind and scale."""
    scale = float(attrs["data-scale"]) if "data-scale" in attrs else None
    return expected_text(find_row(results, attrs)[attrs["data-field"]], attrs["data-kind"], scale)
