"""The docstring examples of audit.grading run (the suite does not use --doctest-modules)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["tables", "metrics", "evaluate", "fairness", "readers", "synthetic", "gaps", "cohort"]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"audit.grading.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
