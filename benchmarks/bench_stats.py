"""Benchmark: the statistics stage on 10,000 cases x 5 subgroup axes x 2,000 cluster-bootstrap resamples.

Run: python benchmarks/bench_stats.py [--cases 10000] [--resamples 2000] [--method percentile|bca]
     python benchmarks/bench_stats.py --demo-like   (48 cases, 4 structures x 4 metrics, 7 axes + 1 intersection,
                                                     1,000 resamples, mixed models on: the demo's statistics load)
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


STRUCTURES = ("vertebral_body", "intervertebral_disc", "spinal_canal", "spinal_cord")
METRICS = {"dice": True, "hd95": False, "assd": False, "nsd_2mm": True}


def synthetic_analysis_table(n_cases: int, seed: int = 0, n_structures: int = 2, n_metrics: int = 2) -> pd.DataFrame:
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
            "ethnicity": rng.choice(["Hispanic or Latino", "Not Hispanic or Latino", "Unknown"], n_cases, p=[0.1, 0.8, 0.1]),
        }
    )
    draws = {"dice": lambda: rng.beta(30, 3, n_cases), "hd95": lambda: rng.gamma(2.0, 1.0, n_cases),
             "assd": lambda: rng.gamma(1.5, 0.5, n_cases), "nsd_2mm": lambda: rng.beta(20, 2, n_cases)}  # fmt: skip
    parts = []
    for structure in STRUCTURES[:n_structures]:
        for metric in list(METRICS)[:n_metrics]:
            parts.append(cases.assign(structure=structure, metric=metric, value=draws[metric](), status="ok"))
    return add_age_band(pd.concat(parts, ignore_index=True), (18, 40, 60, 75, 120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=("percentile", "bca"), default="percentile")
    parser.add_argument("--demo-like", action="store_true")
    parser.add_argument("--gap-test", choices=("auto", "permutation"), default="auto")
    parser.add_argument("--permutations", type=int, default=10_000)
    args = parser.parse_args()
    if args.demo_like:
        n_cases, n_resamples, n_s, n_m = 48, 1_000, 4, 4
        columns = ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band")
        subgroups = SubgroupSettings(columns=columns, intersections=(("race", "sex"),))
        adjusted = AdjustedModelSettings(enabled=True, factors=("vendor", "field_strength", "age_years", "sex", "race"))
    else:
        n_cases, n_resamples, n_s, n_m = args.cases, args.resamples, 2, 2
        subgroups = SubgroupSettings(columns=("site", "vendor", "field_strength", "sex", "age_band"), intersections=())
        adjusted = AdjustedModelSettings(enabled=False)
    table = synthetic_analysis_table(n_cases, n_structures=n_s, n_metrics=n_m)
    if args.demo_like:
        table["site"] = table["patient_id"].map(lambda p: f"site-{'ABCD'[int(p[1:]) % 4]}")
    statistics = StatisticsSettings(bootstrap_iterations=n_resamples, bootstrap_method=args.method, adjusted_model=adjusted,
                                    equivalence_margins={"dice": 0.03}, failure_thresholds={"dice": 0.8},
                                    gap_test=args.gap_test, permutation_iterations=args.permutations)  # fmt: skip
    metrics = list(METRICS)[:n_m]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        analyze(table, structures=STRUCTURES[:n_s], metrics=metrics, subgroups=subgroups, statistics=statistics,
                higher_is_better={m: METRICS[m] for m in metrics})  # fmt: skip
        times.append(time.perf_counter() - t0)
    print(json.dumps({"benchmark": "stats-demo-like" if args.demo_like else "stats", "cases": n_cases,
                      "axes": len(subgroups.columns) + len(subgroups.intersections), "resamples": n_resamples, "method": args.method,
                      "gap_test": args.gap_test, "permutations": args.permutations if args.gap_test == "permutation" else None,
                      "columns": n_s * n_m, "adjusted_model": adjusted.enabled, "best_s": round(min(times), 3),
                      "median_s": round(float(np.median(times)), 3), "cpus": os.cpu_count()}))  # fmt: skip


if __name__ == "__main__":
    main()
