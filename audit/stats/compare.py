"""Paired comparisons on the same cases: two or more models, or one model against two reference label sets.

Only cases evaluable in both tables are paired; the others (failed, both empty, infinite, or absent from one
table) are counted in ``n_unpaired``. For each (structure, metric), the case-level difference (other - baseline) is averaged per patient; the
mean difference gets a cluster-bootstrap interval over patients and a Wilcoxon signed-rank test on the
patient-level differences. Holm adjustment runs over every comparison of the call.

Zero differences (two models with the same HD95 on a case are common: 38 to 50 of 76 patient differences on real
CSpineSeg results) follow **Pratt's rule** (``scipy.stats.wilcoxon(zero_method="pratt")``): zeros are ranked
with the other differences and then left out of the rank sums, so many ties weaken the evidence for a
difference instead of being discarded (Wilcoxon's rule, which tests only the cases that differ, would treat 26
differing cases of 76 as if they were the whole sample). With zeros the p-value is the normal approximation
with tie correction. ``n_zero`` counts the zero differences of each row.

``compare_models(..., pairs="all")`` compares every pair of models (``M (M - 1) / 2`` rows, ``other - baseline``
with the first-listed model as baseline) instead of every model against one baseline; Holm covers all rows.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from audit.protocol import StatisticsSettings
from audit.stats.bootstrap import cluster_bootstrap_means, percentile_interval
from audit.stats.gaps import holm
from audit.stats.groups import EVALUABLE

logger = logging.getLogger(__name__)

__all__ = ["paired_differences", "compare_models", "compare_references", "COMPARE_COLUMNS", "WILCOXON_ZERO_METHOD", "PAIRS"]

COMPARE_COLUMNS = (
    "kind", "baseline", "other", "structure", "metric", "n_cases", "n_unpaired", "n_patients", "n_zero", "mean_baseline", "mean_other",
    "mean_difference", "ci_low", "ci_high", "test", "statistic", "p_value", "p_holm",
)  # fmt: skip
#: How the Wilcoxon signed-rank test treats zero differences (scipy ``zero_method``); see the module docstring.
WILCOXON_ZERO_METHOD = "pratt"
#: ``compare_models(pairs=...)`` values.
PAIRS = ("baseline", "all")


def _evaluable(table: pd.DataFrame, name: str) -> pd.DataFrame:
    missing = sorted({"case_id", "patient_id", "structure", "metric", "value", "status"} - set(table.columns))
    if missing:
        raise ValueError(f"tables[{name!r}]: missing columns {missing}; an analysis table (metrics joined with the manifest) is needed")
    keep = table["status"].isin(EVALUABLE) & np.isfinite(table["value"].astype(float))
    return table.loc[keep, ["case_id", "patient_id", "structure", "metric", "value"]]


def paired_differences(
    baseline: pd.DataFrame,
    other: pd.DataFrame,
    *,
    structures: Sequence[str],
    metrics: Sequence[str],
    statistics: StatisticsSettings,
    kind: str,
    names: tuple[str, str],
) -> pd.DataFrame:
    """Paired comparison rows of ``other`` against ``baseline`` (both analysis tables with ``patient_id``)."""
    a = _evaluable(baseline, names[0])
    b = _evaluable(other, names[1]).drop(columns="patient_id")
    both = a.merge(b, on=["case_id", "structure", "metric"], suffixes=("_a", "_b"))
    union = pd.concat([baseline[["case_id", "structure", "metric"]], other[["case_id", "structure", "metric"]]]).drop_duplicates()
    rng = np.random.default_rng(statistics.seed)
    rows = []
    for structure in structures:
        for metric in metrics:
            sub = both[(both["structure"] == structure) & (both["metric"] == metric)]
            n_union = int(((union["structure"] == structure) & (union["metric"] == metric)).sum())
            row = dict(kind=kind, baseline=names[0], other=names[1], structure=structure, metric=metric, n_cases=len(sub),
                       n_unpaired=n_union - len(sub))  # fmt: skip
            if sub.empty:
                rows.append(row)
                continue
            diff = (sub["value_b"] - sub["value_a"]).to_numpy(dtype=float)
            codes, uniques = pd.factorize(sub["patient_id"])
            sums = np.bincount(codes, weights=diff)[:, None]
            counts = np.bincount(codes).astype(float)[:, None]
            boot = cluster_bootstrap_means(sums, counts, n_resamples=statistics.bootstrap_iterations, rng=rng)
            lo, hi = percentile_interval(boot, statistics.confidence_level)
            patient_diff = sums[:, 0] / counts[:, 0]
            if np.all(patient_diff == 0) or patient_diff.size < 2:
                stat, p = (math.nan, 1.0 if np.all(patient_diff == 0) else math.nan)
            else:
                with warnings.catch_warnings():
                    # scipy notes when zero differences force the normal approximation: expected with tied scores
                    warnings.simplefilter("ignore", UserWarning)
                    res = stats.wilcoxon(patient_diff, zero_method=WILCOXON_ZERO_METHOD)
                stat, p = float(res.statistic), float(res.pvalue)
            row.update(
                n_patients=len(uniques), n_zero=int(np.sum(patient_diff == 0)), mean_baseline=float(sub["value_a"].mean()),
                mean_other=float(sub["value_b"].mean()), mean_difference=float(diff.mean()), ci_low=float(lo[0]), ci_high=float(hi[0]),
                test=f"wilcoxon signed-rank (patient means; zeros: {WILCOXON_ZERO_METHOD})", statistic=stat, p_value=p,
            )  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def _holm(table: pd.DataFrame) -> pd.DataFrame:
    tested = table["p_value"].notna()
    if tested.any():
        table.loc[tested, "p_holm"] = holm(table.loc[tested, "p_value"].to_numpy(float))
    return table


def compare_models(
    tables: Mapping[str, pd.DataFrame],
    *,
    structures: Sequence[str],
    metrics: Sequence[str],
    statistics: StatisticsSettings,
    baseline: str | None = None,
    pairs: str = "baseline",
) -> pd.DataFrame:
    """Every model against ``baseline`` (default: the first) on the cases they share, or every pair (``pairs="all"``).

    Examples
    --------
    >>> from audit.protocol import StatisticsSettings
    >>> t = pd.DataFrame({"case_id": list("abcd"), "patient_id": list("abcd"), "structure": "disc", "metric": "dice",
    ...                   "value": [0.8, 0.9, 0.85, 0.7], "status": "ok"})
    >>> out = compare_models({"m1": t, "m2": t.assign(value=t["value"] + 0.01), "m3": t}, structures=["disc"], metrics=["dice"],
    ...                      statistics=StatisticsSettings(bootstrap_iterations=100), pairs="all")
    >>> out[["baseline", "other"]].values.tolist()
    [['m1', 'm2'], ['m1', 'm3'], ['m2', 'm3']]
    """
    if len(tables) < 2:
        raise ValueError(f"tables: need at least two models to compare; found {list(tables)}")
    if pairs not in PAIRS:
        raise ValueError(f"pairs: allowed values are {list(PAIRS)}; found {pairs!r}")
    names = list(tables)
    base = baseline or names[0]
    if base not in tables:
        raise ValueError(f"baseline: allowed values are {names}; found {base!r}")
    if pairs == "all":
        combos = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    else:
        combos = [(base, n) for n in names if n != base]
    parts = [
        paired_differences(tables[a], tables[b], structures=structures, metrics=metrics, statistics=statistics, kind="model", names=(a, b))
        for a, b in combos
    ]
    return _holm(pd.concat(parts, ignore_index=True))


def compare_references(
    first: pd.DataFrame,
    second: pd.DataFrame,
    *,
    structures: Sequence[str],
    metrics: Sequence[str],
    statistics: StatisticsSettings,
    names: tuple[str, str] = ("expert", "model_made"),
) -> pd.DataFrame:
    """Reference-standard sensitivity: one model scored against two reference label sets."""
    table = paired_differences(first, second, structures=structures, metrics=metrics, statistics=statistics, kind="reference", names=names)
    return _holm(table)
