"""Helpers shared by the report tests: an independent re-implementation of the documented number format,
an HTML parser collecting the tagged numbers, and a look-up of a number's row by its key attributes."""

from __future__ import annotations

import math
from html.parser import HTMLParser


def expected_text(value, kind: str) -> str:
    """The documented number format (docs/report.md, "Number format"), written again independently of audit.report."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value in ("inf", "-inf") or (isinstance(value, float) and math.isinf(value)):
        return "∞" if value in ("inf", math.inf) else "-∞"
    if kind == "count":
        return f"{round(value):d}"
    if kind == "p" and 0 < value < 0.001:
        return "<0.001"
    if kind == "effect":
        return f"{value:.3g}"
    digits = {"dice": 3, "iou": 3, "nsd_2mm": 3, "failure_rate": 3, "p": 3, "percent": 1}.get(kind, 2)
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
    skip = {"class", "data-src", "data-row", "data-field", "data-kind"}
    keys = {k[5:].replace("-", "_"): v for k, v in attrs.items() if k not in skip}
    matches = [r for r in node if all(str(r.get(k)) == v for k, v in keys.items())]
    assert len(matches) == 1, (attrs, len(matches))
    return matches[0]
