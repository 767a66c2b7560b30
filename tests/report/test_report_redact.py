"""Absolute paths in free text show only their file name (audit.report.redact); other slashes stay."""

from __future__ import annotations

import pytest

from audit.report.redact import redact_paths, redact_strings


@pytest.mark.parametrize(("text", "shown"), [
    ("image file not found: /data/DOE_JOHN/images/y.nii.gz", "image file not found: …/y.nii.gz"),
    ('cannot read "/srv/a/b.nii" (x)', 'cannot read "…/b.nii" (x)'),
    ("(/data/P1/x.nii)", "(…/x.nii)"),
    ("~/scans/DOE/x.nii", "…/x.nii"),
    (r"C:\scans\DOE\x.nii failed", "…/x.nii failed"),
    (r"\\server\share\DOE\x.nii", "…/x.nii"),
    ("site-A/sub-0001 and tptbox/c5c7", "site-A/sub-0001 and tptbox/c5c7"),
    ("relative labels/x.nii and ./run/p.nii", "relative labels/x.nii and ./run/p.nii"),
    ("n/a, 1/2, 0.5/0.7", "n/a, 1/2, 0.5/0.7"),
    ("see https://example.org/a/b/c", "see https://example.org/a/b/c"),
    ("/x.nii at the root", "/x.nii at the root"),
], ids=["posix", "quoted", "parenthesized", "home", "windows", "unc", "case-ids", "relative", "fractions", "url", "root-file"])  # fmt: skip
def test_redact_paths(text, shown):
    assert redact_paths(text) == shown


def test_redact_strings_walks_nested_values_and_keeps_keys_and_numbers():
    doc = {"/k/e/y": [{"error": "bad /a/b/c.nii", "n": 3}, None, 1.5], "ok": "fine"}
    assert redact_strings(doc) == {"/k/e/y": [{"error": "bad …/c.nii", "n": 3}, None, 1.5], "ok": "fine"}


def test_redact_paths_rejects_non_text():
    with pytest.raises(TypeError, match="text must be a str; found int"):
        redact_paths(3)
