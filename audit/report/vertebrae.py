"""The report's "Per-vertebra evaluation" section: read ``vertebrae.json`` of a run folder (CT runs, issue #15)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["vertebra_section"]


def vertebra_section(run_dir: Path) -> dict[str, Any] | None:
    """The summaries the ``vertebrae.html.j2`` partial shows, or None when the run has no per-vertebra stage."""
    path = Path(run_dir) / "vertebrae.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
