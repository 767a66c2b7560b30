"""Headless-Chromium probe of a report: injects a probe script into a copy of report.html, lets the page load, sorts
a table, filters it, enlarges a gallery image, then reads the page's width, the console errors and what the
interactions did from the DOM that ``chromium --dump-dom`` prints. Used by test_report_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from audit.report.pdf import chromium_command, find_chromium

#: Collects uncaught errors, unhandled rejections and console.error calls from the first line of <head> on.
ERRORS = """<script>window.__errors=[];window.addEventListener("error",function(e){__errors.push("error: "+e.message)});
window.addEventListener("unhandledrejection",function(e){__errors.push("rejection: "+e.reason)});
(function(){var ce=console.error;console.error=function(){__errors.push("console.error: "+Array.prototype.join.call(arguments," "));ce.apply(console,arguments)}})();</script>"""

#: After load: measure overflow, sort the first gap table by raw p (ascending), filter the first filterable table for
#: "intervertebral", click the first gallery image.
PROBE = """<script>window.addEventListener("load",function(){var out={};
var root=document.documentElement;out.viewport=root.clientWidth;out.scrollWidth=root.scrollWidth;out.bodyScrollWidth=document.body.scrollWidth;
var wide=[];document.querySelectorAll("main > section > *, header, nav").forEach(function(el){var r=el.getBoundingClientRect();if(r.right>root.clientWidth+1){wide.push(el.tagName+"#"+(el.id||"")+":"+Math.round(r.right))}});out.wide=wide;
var gap=null;
document.querySelectorAll("table.data").forEach(function(t){if(!gap&&t.tHead&&t.tHead.textContent.indexOf("p Holm")>=0){gap=t}});
if(gap){var ths=gap.tHead.rows[0].cells;var col=-1;for(var i=0;i<ths.length;i++){if(ths[i].textContent.trim().indexOf("p")===0&&ths[i].textContent.trim().length<3){col=i}}
ths[col].click();out.sortedColumn=Array.prototype.map.call(gap.tBodies[0].rows,function(r){return r.cells[col].textContent.trim()});out.sortState=ths[col].getAttribute("aria-sort")}
var boxes=document.querySelectorAll("input.filter");out.filters=boxes.length;
if(boxes.length){var box=boxes[0];var t=box.nextElementSibling.querySelector("table")||box.nextElementSibling;box.value="intervertebral";box.dispatchEvent(new Event("input"));
var rows=Array.prototype.slice.call(t.tBodies[0].rows);out.filterShown=rows.filter(function(r){return !r.hidden}).map(function(r){return r.textContent});out.filterHidden=rows.filter(function(r){return r.hidden}).length}
var img=document.querySelector(".gallery figure img");if(img){var w=img.getBoundingClientRect().width;img.click();out.zoomed=img.parentNode.classList.contains("zoom");out.zoomGrowth=img.getBoundingClientRect().width/w;
out.zoomScrollWidth=root.scrollWidth}
out.errors=window.__errors;var pre=document.createElement("pre");pre.id="__probe";pre.textContent=JSON.stringify(out);document.body.appendChild(pre)});</script>"""


def probe_report(report: Path, width: int, workdir: Path, *, timeout_s: float = 90.0) -> dict:
    """Load ``report`` at ``width`` px in headless Chromium and return the probe's findings (see PROBE)."""
    browser = find_chromium()
    assert browser is not None
    workdir.mkdir(parents=True, exist_ok=True)
    page = workdir / f"probe-{width}.html"
    html = report.read_text(encoding="utf-8")
    html = html.replace("<head>", "<head>" + ERRORS, 1).replace("</body>", PROBE + "</body>", 1)
    page.write_text(html, encoding="utf-8")
    cmd = chromium_command(browser, workdir / f"profile-{width}", "--hide-scrollbars", f"--window-size={width},1000", "--virtual-time-budget=15000",
                           "--dump-dom", page.as_uri())  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, timeout=timeout_s)
    found = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout.decode(errors="replace"), re.DOTALL)
    assert found, done.stderr.decode(errors="replace")[-2000:]
    text = found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    return json.loads(text)


def chromium_or_skip() -> str:
    """The Chromium executable, or skip the calling test with the reason."""
    import pytest

    browser = find_chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); the browser checks need it")
    return browser

