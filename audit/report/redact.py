"""Redaction of absolute file paths in free text (error messages, warnings) shown in the report or packaged.

Folder names of a site's storage can carry identifiers (``/data/DOE_JOHN_1234567/t2.nii.gz``). The report
and the evidence package therefore show an absolute path as ``…/<file name>``: the directory part is
dropped, the file name is kept (the site adapter chose it, and a reviewer needs it to find the case).
Relative paths are left alone: they are relative to a site root or to the run folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED_DIR", "redact_paths", "redact_strings"]

#: What replaces the directory part of an absolute path.
REDACTED_DIR = "…/"

# POSIX: a "/" not preceded by a word character, ".", "~", ":" or "/" (so "n/a", "1/2", "./x" and URLs
# are left alone), followed by one or more "segment/" parts; the final segment (the file name) is kept.
_POSIX_DIRS = re.compile(r"(?<![\w.~:/\\])(?:~)?/(?:[^\s/\\\"'<>|:;,()\[\]{}]+/)+")
# Windows: a drive letter or a UNC prefix, then one or more "segment\" (or "/") parts.
_WINDOWS_DIRS = re.compile(r"(?<![\w])(?:[A-Za-z]:|\\\\[^\s\\/\"'<>|]+)[\\/](?:[^\s\\/\"'<>|:;,()\[\]{}]+[\\/])+")


def redact_paths(text: str) -> str:
    """Replace the directory part of every absolute path in ``text`` by ``…/``.

    Examples
    --------
    >>> redact_paths("image file not found: /data/DOE_JOHN/images/y.nii.gz")
    'image file not found: …/y.nii.gz'
    >>> redact_paths(r"cannot read C:\\scans\\DOE\\x.nii")
    'cannot read …/x.nii'
    >>> redact_paths("n/a, 1/2 and ratio 3/4 stay")
    'n/a, 1/2 and ratio 3/4 stay'
    """
    if not isinstance(text, str):
        raise TypeError(f"redact_paths: text must be a str; found {type(text).__name__}")
    return _POSIX_DIRS.sub(REDACTED_DIR, _WINDOWS_DIRS.sub(REDACTED_DIR, text))


def redact_strings(value: Any) -> Any:
    """Apply :func:`redact_paths` to every string inside nested dicts and lists (keys are kept)."""
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, Mapping):
        return {k: redact_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_strings(v) for v in value]
    return value
