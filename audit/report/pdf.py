"""report.pdf from report.html through headless Chromium, when it is installed.

The PDF is printed from a temporary copy of the report whose folded tables (``<details>``) are open, so the
printout holds every number of the HTML file. No network: Chromium is started with a fresh profile, background
networking and component updates off, and the page itself loads nothing from outside.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["CHROMIUM_NAMES", "ChromiumNotFound", "chromium_command", "find_chromium", "print_pdf"]

#: Executable names tried in order (Debian's package is ``chromium``).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ChromiumNotFound(RuntimeError):
    """No headless Chromium on PATH: the PDF cannot be printed."""


def find_chromium() -> str | None:
    """Path of the first Chromium of :data:`CHROMIUM_NAMES` on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_command(browser: str, profile: Path, *extra: str) -> list[str]:
    """The headless Chromium command line shared by printing and the browser tests."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *extra]  # fmt: skip


def print_pdf(html_path: str | Path, pdf_path: str | Path | None = None, *, timeout_s: float = 180.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` (default: beside it, ``.pdf``) with headless Chromium; return the PDF path.

    Raises
    ------
    ChromiumNotFound
        When no Chromium is installed (``apt-get install chromium`` on Debian).
    RuntimeError
        When Chromium exits without writing the PDF (its last output lines are in the message).
    """
    html_path = Path(html_path)
    target = Path(pdf_path) if pdf_path else html_path.with_suffix(".pdf")
    browser = find_chromium()
    if browser is None:
        raise ChromiumNotFound(f"--pdf: no headless Chromium found (tried {list(CHROMIUM_NAMES)} on PATH); install the 'chromium' package")
    with tempfile.TemporaryDirectory(prefix="spine-audit-pdf-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(re.sub(r"<details(?![^>]*\bopen\b)", "<details open", html_path.read_text(encoding="utf-8")), encoding="utf-8")
        out = Path(tmp) / "report.pdf"
        cmd = chromium_command(browser, Path(tmp) / "profile", "--no-pdf-header-footer", f"--print-to-pdf={out}", page.as_uri())
        done = subprocess.run(cmd, check=False, capture_output=True, timeout=timeout_s)
        if not out.is_file() or out.stat().st_size == 0:
            tail = done.stderr.decode(errors="replace")[-1500:]
            raise RuntimeError(f"--pdf: Chromium ({browser}) wrote no PDF (exit status {done.returncode}): {tail}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), target)
    logger.info("PDF written: %s (%.1f kB)", target, target.stat().st_size / 1024)
    return target
