"""Every docstring example in the package runs and prints what it shows (the suite does not use --doctest-modules).

A module that cannot be imported here (an optional dependency missing) fails the test rather than being skipped: every
optional dependency the package names is in the dev extra.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import audit

MODULES = sorted(m.name for m in pkgutil.walk_packages(audit.__path__, prefix="audit.") if not m.name.endswith("__main__"))


def test_the_package_has_docstring_examples():
    """The walk finds the package's modules and they hold examples (so the parametrized test below is not vacuous)."""
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert len(MODULES) > 50 and examples > 100, (len(MODULES), examples)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (output above)"
