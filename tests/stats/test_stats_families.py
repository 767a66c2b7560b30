"""Multiplicity families (audit.stats.families): the protocol's pre-registered comparisons form the primary family;
exploratory comparisons (other metrics, intersections, axes the pipeline adds) are adjusted in their own family and
cannot change a pre-specified adjusted p-value. Oracle: statsmodels multipletests within each family."""

from __future__ import annotations

import numpy as np
import pandas as pd
from stats_builders import analysis_table_with_gap, settings
from statsmodels.stats.multitest import multipletests

from audit.protocol import SubgroupSettings
from audit.stats import analyze
from audit.stats.families import EXPLORATORY, PRE_SPECIFIED, adjust_by_family, multiplicity_family
from audit.stats.gaps import adjust_pvalues

HIGHER = {"dice": True, "hd95": False}


def two_metric_table(seed: int) -> pd.DataFrame:
    """Dice with a planted 0.02 vendor gap, HD95 alongside, on the same cases (4 vendors x 15 patients)."""
    dice = analysis_table_with_gap(15, gap=0.02, groups=("A", "B", "C", "D"), seed=seed)
    hd95 = dice.assign(metric="hd95", value=3.0 - 10 * (dice["value"] - 0.88))
    return pd.concat([dice, hd95], ignore_index=True)


def test_family_labels_follow_the_primary_metric_and_the_pre_registered_axes():
    gaps = pd.DataFrame({"axis": ["vendor", "vendor", "sex", "vendor x sex", "site_role"], "metric": ["dice", "hd95", "dice", "dice", "dice"]})
    families = multiplicity_family(gaps, primary_metric="dice", pre_registered_axes=["vendor", "sex"])
    assert families.tolist() == [PRE_SPECIFIED, EXPLORATORY, PRE_SPECIFIED, EXPLORATORY, EXPLORATORY]


def test_adjustment_within_each_family_matches_multipletests():
    rng = np.random.default_rng(5)
    gaps = pd.DataFrame({"p_value": rng.uniform(0, 0.2, 12), "family": [PRE_SPECIFIED] * 5 + [EXPLORATORY] * 7})
    gaps.loc[3, "p_value"] = np.nan  # an untested row stays outside its family
    out = adjust_by_family(gaps, adjust_pvalues, "holm", 0.05)
    assert out.index.tolist() == gaps.index.tolist()
    for family in (PRE_SPECIFIED, EXPLORATORY):
        sub = out[(out["family"] == family) & out["p_value"].notna()]
        np.testing.assert_allclose(sub["p_holm"], multipletests(sub["p_value"], method="holm")[1], rtol=1e-12)
        np.testing.assert_allclose(sub["p_fdr_bh"], multipletests(sub["p_value"], method="fdr_bh")[1], rtol=1e-12)
    assert np.isnan(out.loc[3, "p_holm"])


def test_exploratory_axes_and_metrics_do_not_change_pre_specified_p_values():
    table = two_metric_table(seed=31)
    table["site_role"] = np.where(table["site"] == "site0", "external", "training site")
    base = analyze(table, structures=("vertebral_body",), metrics=("dice",), higher_is_better=HIGHER,
                   subgroups=SubgroupSettings(columns=("vendor",), intersections=()), statistics=settings())  # fmt: skip
    more = analyze(table, structures=("vertebral_body",), metrics=("dice", "hd95"), higher_is_better=HIGHER,
                   subgroups=SubgroupSettings(columns=("vendor", "site_role"), intersections=()), statistics=settings(),
                   pre_registered_axes=("vendor",))  # fmt: skip
    pre = more.gaps[more.gaps["family"] == PRE_SPECIFIED]
    assert set(pre["axis"]) == {"vendor"} and set(pre["metric"]) == {"dice"}
    assert set(more.gaps.loc[more.gaps["family"] == EXPLORATORY, "axis"]) == {"vendor", "site_role"}
    np.testing.assert_allclose(pre["p_holm"].to_numpy(float), base.gaps["p_holm"].to_numpy(float), rtol=1e-12)
    assert more.settings["family_sizes"] == {PRE_SPECIFIED: int(pre["p_value"].notna().sum()),
                                             EXPLORATORY: int(more.gaps.loc[more.gaps["family"] == EXPLORATORY, "p_value"].notna().sum())}  # fmt: skip
