"""Paired comparisons of models and of reference standards."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from stats_builders import analysis_table_with_gap, settings

from audit.stats import compare_models, compare_references


def test_paired_model_difference_and_wilcoxon_match_direct_computation():
    a = analysis_table_with_gap(30, groups=("A",), seed=1)
    rng = np.random.default_rng(2)
    b = a.assign(value=a["value"] + 0.02 + rng.normal(0, 0.01, len(a)))
    out = compare_models({"old": a, "new": b}, structures=("vertebral_body",), metrics=("dice",), statistics=settings())
    row = out.iloc[0]
    diff = (b["value"] - a["value"]).to_numpy()
    assert row["baseline"] == "old" and row["other"] == "new"
    np.testing.assert_allclose(row["mean_difference"], diff.mean(), rtol=1e-12)
    np.testing.assert_allclose(row["p_value"], sps.wilcoxon(diff).pvalue, rtol=1e-10)  # one case per patient
    assert row["ci_low"] < 0.02 < row["ci_high"]


def test_reference_sensitivity_and_bad_arguments():
    a = analysis_table_with_gap(15, groups=("A",), seed=3)
    out = compare_references(a, a, structures=("vertebral_body",), metrics=("dice",), statistics=settings())
    assert out["mean_difference"].iloc[0] == 0 and out["p_value"].iloc[0] == 1.0 and out["kind"].iloc[0] == "reference"
    with pytest.raises(ValueError, match="need at least two models"):
        compare_models({"only": a}, structures=("vertebral_body",), metrics=("dice",), statistics=settings())
    with pytest.raises(ValueError, match="baseline: allowed values"):
        compare_models({"x": a, "y": a}, structures=("vertebral_body",), metrics=("dice",), statistics=settings(), baseline="z")
