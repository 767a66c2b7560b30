"""Reader variability as the ceiling: model versus the readers' consensus and the shortfall, with cluster-bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from grading_builders import rater_table
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import cohens_kappa

from audit.grading.readers import agreement_ceiling, consensus_grades


def test_demo_consensus_and_shortfall_match_sklearn(grading_demo):
    _, doc, grades, _ = grading_demo
    key = ["case", "level", "condition", "side"]
    wide = grades.pivot_table(index=key, columns="reader", values="grade", aggfunc="first").dropna()
    consensus = np.minimum(wide["reader_1"], wide["reader_2"])  # two readers: the lower middle grade
    kappa = lambda a, b: cohen_kappa_score(a, b, labels=[0, 1, 2], weights="quadratic")  # noqa: E731
    ceiling = pd.DataFrame(doc["agreement"]["ceiling"]).set_index("quantity")
    assert ceiling.loc["model_vs_consensus", "estimate"] == pytest.approx(kappa(wide["model"], consensus), abs=1e-12)
    rr = kappa(wide["reader_1"], wide["reader_2"])
    mr = (kappa(wide["model"], wide["reader_1"]) + kappa(wide["model"], wide["reader_2"])) / 2
    assert ceiling.loc["reader_reader_mean", "estimate"] == pytest.approx(rr, abs=1e-12)
    assert ceiling.loc["model_reader_mean", "estimate"] == pytest.approx(mr, abs=1e-12)
    assert ceiling.loc["shortfall", "estimate"] == pytest.approx(rr - mr, abs=1e-12)
    assert ceiling.loc["shortfall", "estimate"] == pytest.approx(doc["agreement"]["summary"]["model_shortfall"], abs=1e-12)
    for q, row in ceiling.iterrows():
        assert row.ci_low <= row.estimate <= row.ci_high, q
    assert ceiling.loc["model_vs_consensus", "n_patients"] == grades["patient"].nunique()


def test_consensus_is_the_low_median():
    t = rater_table(0, n_patients=50, readers=3)
    c = consensus_grades(t).set_index("case_id")["grade"]
    wide = t.pivot_table(index="case_id", columns="reader", values="grade")
    np.testing.assert_array_equal(c.reindex(wide.index), np.median(wide[["reader_1", "reader_2", "reader_3"]], axis=1).astype(int))


def test_kappa_interval_matches_the_asymptotic_se_and_respects_clusters():
    """One level per patient: the bootstrap SD of the model-vs-consensus kappa equals statsmodels' asymptotic SE of
    the quadratic kappa (measured 0.0256 vs 0.0262, 2%; Monte Carlo SE of the SD at B = 4,000 about 1.1%; tolerance 8%).
    Copying every level inside its patient leaves the interval identical (the patient is the unit)."""
    one = rater_table(1, n_patients=600)
    res = agreement_ceiling(one, n_grades=3, n_resamples=4000, seed=3, level=0.6827).set_index("quantity")
    wide = one.pivot_table(index="case_id", columns="reader", values="grade")
    table = pd.crosstab(wide["model"], wide["reader_1"]).reindex(index=range(3), columns=range(3), fill_value=0).to_numpy()
    asym = cohens_kappa(table, wt="quadratic")
    row = res.loc["model_vs_consensus"]
    assert row.estimate == pytest.approx(asym.kappa, abs=1e-12)
    assert (row.ci_high - row.ci_low) / 2 == pytest.approx(asym.std_kappa, rel=0.08)
    assert np.isnan(res.loc["shortfall", "estimate"]) and np.isnan(res.loc["shortfall", "ci_low"])  # one reader: no ceiling
    copied = pd.concat([one, one.assign(level="L5-S1")], ignore_index=True)
    again = agreement_ceiling(copied, n_grades=3, n_resamples=4000, seed=3, level=0.6827).set_index("quantity")
    assert again.loc["model_vs_consensus", ["estimate", "ci_low", "ci_high"]].tolist() == pytest.approx(row[["estimate", "ci_low", "ci_high"]].tolist(), abs=1e-12)


def test_shortfall_interval_on_a_planted_gap():
    """Readers off by one grade 20% of the time, the model 30%: the readers agree more with each other than with
    the model, and the shortfall's 95% interval excludes 0 (three readers, 300 patients x 3 levels)."""
    res = agreement_ceiling(rater_table(2, n_patients=300, levels_per_patient=3, readers=3), n_grades=3, n_resamples=1000).set_index("quantity")
    assert res.loc["shortfall", "ci_low"] > 0
    assert res.loc["shortfall", "estimate"] == pytest.approx(res.loc["reader_reader_mean", "estimate"] - res.loc["model_reader_mean", "estimate"])
    assert res.loc["reader_reader_mean", "n_levels"] == 3 * 900 and res.loc["model_reader_mean", "n_levels"] == 3 * 900
