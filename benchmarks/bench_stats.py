"""Benchmark: the statistics stage on 10,000 cases x 5 subgroup axes x 2,000 cluster-bootstrap resamples.

Run: python benchmarks/bench_stats.py [--cases 10000] [--resamples 2000]
Prints one JSON line; the recorded numbers are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

from audit.protocol import AdjustedModelSettings, StatisticsSettings, SubgroupSettings
from audit.stats import add_age_band, analyze


def synthetic_analysis_table(n_cases: int, seed: int = 0) -> pd.DataFrame:
    """n_cases exams of ~0.9 n_cases patients over 20 sites, 2 structures x 2 metrics, CSpineSeg-like mix."""
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, int(n_cases * 0.9), n_cases)
    cases = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n_cases)],
            "patient_id": [f"p{p}" for p in patients],
            "site": [f"site{p % 20}" for p in patients],
            "vendor": rng.choice(["Siemens", "GE", "Philips"], n_cases),
            "field_strength": rng.choice(["1.5T", "3T"], n_cases),
            "sex": rng.choice(["F", "M", "Unknown"], n_cases, p=[0.54, 0.44, 0.02]),
            "race": rng.choice(["White", "Black or African American", "Asian", "Other", "Unknown"], n_cases, p=[0.63, 0.27, 0.03, 0.04, 0.03]),
            "age_years": rng.normal(54.5, 16.4, n_cases).clip(18, 95),
        }
    )
    parts = []
    for structure in ("vertebral_body", "intervertebral_disc"):
        for metric, values in (("dice", rng.beta(30, 3, n_cases)), ("hd95", rng.gamma(2.0, 1.0, n_cases))):
            parts.append(cases.assign(structure=structure, metric=metric, value=values, status="ok"))
    return add_age_band(pd.concat(parts, ignore_index=True), (18, 40, 60, 75, 120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = synthetic_analysis_table(args.cases)
    subgroups = SubgroupSettings(columns=("site", "vendor", "field_strength", "sex", "age_band"), intersections=())
    statistics = StatisticsSettings(bootstrap_iterations=args.resamples, adjusted_model=AdjustedModelSettings(enabled=False))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        analyze(table, structures=("vertebral_body", "intervertebral_disc"), metrics=("dice", "hd95"), subgroups=subgroups,
                statistics=statistics, higher_is_better={"dice": True, "hd95": False})  # fmt: skip
        times.append(time.perf_counter() - t0)
    print(json.dumps({"benchmark": "stats", "cases": args.cases, "axes": 5, "resamples": args.resamples, "columns": 4,
                      "best_s": round(min(times), 3), "median_s": round(float(np.median(times)), 3), "cpus": os.cpu_count()}))  # fmt: skip


if __name__ == "__main__":
    main()
