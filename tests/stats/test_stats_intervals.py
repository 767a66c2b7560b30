"""Closed-form intervals and tests against statsmodels and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttest_ind, ttost_ind

from audit.stats.gaps import adjust_pvalues
from audit.stats.intervals import (
    minimum_detectable_difference,
    two_group_test,
    welch_tost,
    wilson_interval,
)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 250)], ids=["none", "some", "all", "large"])
def test_wilson_matches_statsmodels(k, n):
    np.testing.assert_allclose(wilson_interval(k, n, 0.95), proportion_confint(k, n, alpha=0.05, method="wilson"), atol=1e-12)


def test_welch_tost_matches_statsmodels():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.90, 0.03, 30), rng.normal(0.89, 0.05, 45)
    expected = ttost_ind(x, y, -0.03, 0.03, usevar="unequal")[0]
    np.testing.assert_allclose(welch_tost(x, y, 0.03), expected, rtol=1e-10)


def test_welch_test_matches_statsmodels():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.9, 0.02, 20), rng.normal(0.88, 0.06, 35)
    stat, p = two_group_test(x, y, "welch")
    ref = ttest_ind(x, y, usevar="unequal")
    np.testing.assert_allclose([stat, p], ref[:2], rtol=1e-10)


def test_holm_and_bh_by_hand():
    """p = (0.01, 0.04, 0.03): Holm 0.03, 0.06, 0.06; BH 0.03, 0.04, 0.04."""
    gaps = pd.DataFrame({"p_value": [0.01, 0.04, 0.03, np.nan]})
    out = adjust_pvalues(gaps, "holm", 0.05)
    np.testing.assert_allclose(out["p_holm"].to_numpy()[:3], [0.03, 0.06, 0.06])
    np.testing.assert_allclose(out["p_fdr_bh"].to_numpy()[:3], [0.03, 0.04, 0.04])
    assert out["significant"].tolist() == [True, False, False, False]  # untested rows are never significant
    assert np.isnan(out["p_adjusted"].iloc[3])


def test_mdd_formula_by_hand():
    """(1.959964 + 0.841621) * sqrt(0.04^2/25 + 0.04^2/100) = 0.0250569."""
    np.testing.assert_allclose(minimum_detectable_difference(0.04, 25, 0.04, 100, alpha=0.05), 2.801585 * np.sqrt(0.04**2 / 25 + 0.04**2 / 100), rtol=1e-6)


def textbook_holm(p):
    """Holm (1979) written out: sort, multiply the i-th smallest by (m - i), running maximum, cap at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def textbook_bh(p):
    """Benjamini-Hochberg (1995) written out: from the largest down, running minimum of m p_(i) / i."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 1.0
    for rank in range(len(p) - 1, -1, -1):
        i = order[rank]
        running = min(running, len(p) * p[i] / (rank + 1))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["s0", "s1", "s2"])
def test_family_adjustment_matches_textbook_holm_and_bh(seed):
    """adjust_pvalues over a family with ties and untested rows against the written-out procedures."""
    p = np.random.default_rng(seed).uniform(0, 0.2, size=37)
    p[:3] = p[3]  # ties
    gaps = pd.DataFrame({"p_value": np.concatenate([p, [np.nan, np.nan]])})
    out = adjust_pvalues(gaps, "fdr_bh", 0.05)
    np.testing.assert_allclose(out["p_holm"].to_numpy()[:37], textbook_holm(list(p)), rtol=1e-12)
    np.testing.assert_allclose(out["p_fdr_bh"].to_numpy()[:37], textbook_bh(list(p)), rtol=1e-12)
    np.testing.assert_allclose(out["p_adjusted"].to_numpy()[:37], textbook_bh(list(p)), rtol=1e-12)
    assert out["p_holm"].iloc[37:].isna().all()  # untested rows are outside the family


def test_adjusted_model_notes_are_merged_per_message():
    from audit.stats.adjusted import _merge_notes

    notes = ["adjusted model (a): x", "adjusted model (b): x", "adjusted model: nested", "adjusted model (b): y", "adjusted model (a): x"]
    assert _merge_notes(notes) == ["adjusted model (a, b): x", "adjusted model: nested", "adjusted model (b): y"]
