"""The report's "Per-vertebra evaluation" section: the ``vertebrae`` tables of results.json (CT runs, issue #15)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["vertebra_section"]


def vertebra_section(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The summaries the ``sections/vertebrae.j2`` partial shows, or None when the run has no per-vertebra stage."""
    return results.get("vertebrae")
