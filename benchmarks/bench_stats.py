"""Benchmark: the statistics stage on 10,000 cases x 5 subgroup axes x 2,000 cluster-bootstrap resamples.

Run: python benchmarks/bench_stats.py [--cases 10000] [--resamples 2000] [--method percentile|bca]
     python benchmarks/bench_stats.py --cases 100000            (the issue-14 scale target: < 30 s, < 4 GB)
     python benchmarks/bench_stats.py --demo-like   (48 cases, 4 structures x 4 metrics, 7 axes + 1 intersection,
                                                     1,000 resamples, mixed models on: the demo's statistics load)
     python benchmarks/bench_stats.py --adjusted --cases 10000 --repeats 1
                                                    (the adjusted model alone, one structure: linear + logit fits)
     python benchmarks/bench_stats.py --compare --cases 100000   (paired model comparison: unstratified bootstrap
                                                    over all ~60,000 patients, 2 structures x 2 metrics)
     ... --baseline DIR   (also run the previous code: DIR is a checkout of the older commit, e.g.
                           ``mkdir DIR && git archive COMMIT | tar -x -C DIR``; each version runs in a fresh
                           interpreter with its own ``audit`` on PYTHONPATH, one after the other, on the same table)

Prints one JSON line per code version (time, peak RSS of that process); with ``--baseline`` a last line
compares the two versions' outputs (identical tables for the statistics; for the adjusted model the largest
difference of the estimates in units of the baseline's standard error, and of the standard errors). The
recorded numbers are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from audit.protocol import AdjustedModelSettings, StatisticsSettings, SubgroupSettings
from audit.stats import add_age_band, analyze

HERE = Path(__file__).resolve().parents[1]
ADJUSTED_FACTORS = ("vendor", "field_strength", "age_years", "sex", "race")


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


def _measure(args: argparse.Namespace) -> dict:
    """Run the selected load ``args.repeats`` times in this process; save its outputs under ``args.save`` if given."""
    import audit

    if args.compare:
        from audit.stats.compare import paired_differences

        table = synthetic_analysis_table(args.cases)
        other = table.assign(value=table["value"] + np.random.default_rng(1).normal(0.0, 0.01, len(table)))
        statistics = StatisticsSettings(bootstrap_iterations=args.resamples)
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out = paired_differences(table, other, structures=STRUCTURES[:2], metrics=list(METRICS)[:2], statistics=statistics,
                                     kind="models", names=("a", "b"))  # fmt: skip
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        saved = {"compare": out}
        info = {"benchmark": "stats-compare", "cases": args.cases, "patients": int(table["patient_id"].nunique()), "resamples": args.resamples,
                "columns": 4}  # fmt: skip
    elif args.adjusted:
        from audit.stats.adjusted import adjusted_effects

        table = synthetic_analysis_table(args.cases, n_structures=1, n_metrics=1)
        settings = AdjustedModelSettings(enabled=True, factors=ADJUSTED_FACTORS)
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out, _ = adjusted_effects(table, settings=settings, structures=STRUCTURES[:1], bounded={"dice": True}, level=0.95)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        saved = {"adjusted": out}
        info = {"benchmark": "stats-adjusted", "cases": args.cases, "structures": 1, "fits": int(out["model"].nunique())}
        if args.statsmodels_check:
            info["statsmodels_check"] = _statsmodels_check(table, settings, args.statsmodels_check)
    else:
        if args.demo_like:
            n_cases, n_resamples, n_s, n_m = 48, 1_000, 4, 4
            columns = ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band")
            subgroups = SubgroupSettings(columns=columns, intersections=(("race", "sex"),))
            adjusted = AdjustedModelSettings(enabled=True, factors=ADJUSTED_FACTORS)
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
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            result = analyze(table, structures=STRUCTURES[:n_s], metrics=metrics, subgroups=subgroups, statistics=statistics,
                             higher_is_better={m: METRICS[m] for m in metrics})  # fmt: skip
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        saved = {name: getattr(result, name) for name in ("overall", "group_estimates", "gaps", "equivalence", "power", "new_site", "adjusted")}
        info = {"benchmark": "stats-demo-like" if args.demo_like else "stats", "cases": n_cases, "patients": int(table["patient_id"].nunique()),
                "sites": int(table["site"].nunique()), "axes": len(subgroups.columns) + len(subgroups.intersections), "resamples": n_resamples,
                "method": args.method, "gap_test": args.gap_test,
                "permutations": args.permutations if args.gap_test == "permutation" else None, "columns": n_s * n_m,
                "adjusted_model": adjusted.enabled}  # fmt: skip
    if args.save:
        for name, frame in saved.items():
            frame.to_pickle(Path(args.save) / f"{name}.pkl")
    return {**info, "best_s": round(min(times), 3), "median_s": round(float(np.median(times)), 3), "runs_s": [round(t, 2) for t in times],
            "cpu_s": [round(c, 2) for c in cpu],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 1), "audit": str(Path(audit.__file__).parents[1])}  # fmt: skip


def _statsmodels_check(table: pd.DataFrame, settings: AdjustedModelSettings, how: str) -> list[dict]:
    """Refit every design the nested solver saw with statsmodels MixedLM (L-BFGS then Powell; ``how``: dense or sparse
    patient design) and report both REML log-likelihoods, variance ratios and the largest differences."""
    import warnings

    import statsmodels.formula.api as smf

    import audit.stats.adjusted as adjusted

    seen = []
    solver = adjusted.fit_nested_reml

    def spy(y, x, sites, patients=None):
        fit = solver(y, x, sites, patients)
        seen.append((y, x, sites, patients, fit))
        return fit

    adjusted.fit_nested_reml = spy
    try:
        adjusted.adjusted_effects(table, settings=settings, structures=STRUCTURES[:1], bounded={"dice": True}, level=0.95)
    finally:
        adjusted.fit_nested_reml = solver
    out = []
    for y, x, sites, patients, fit in seen:
        names = [f"x{i}" for i in range(x.shape[1])]
        data = pd.DataFrame(x, columns=names).assign(y=y, site=sites, patient_id=patients)
        vc = {"patient": "0 + C(patient_id)"} if patients is not None else None
        model = smf.mixedlm("y ~ 0 + " + " + ".join(names), data, groups=data["site"], re_formula="1", vc_formula=vc, use_sparse=how == "sparse")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = model.fit(reml=True, method=["lbfgs", "powell"])
        se = ref.bse_fe.to_numpy()
        out.append({"statsmodels": how, "llf_statsmodels": round(float(ref.llf), 5), "llf_nested": round(float(fit.llf), 5),
                    "ratios_statsmodels": [round(float(v), 5) for v in np.r_[np.asarray(ref.cov_re).ravel(), np.asarray(ref.vcomp)] / ref.scale],
                    "ratios_nested": [round(float(v), 5) for v in fit.ratios],
                    "max_estimate_diff_in_se": float(np.max(np.abs(fit.fe_params - ref.fe_params.to_numpy()) / se)),
                    "se_ratio_nested_to_statsmodels": [round(float(v), 4) for v in fit.bse_fe / se]})  # fmt: skip
    return out


def _compare(base: Path, current: Path, adjusted: bool) -> dict:
    """How the two versions' saved outputs differ."""
    if adjusted:
        a, b = pd.read_pickle(base / "adjusted.pkl"), pd.read_pickle(current / "adjusted.pkl")
        keys = ["model", "term"]
        m = a.merge(b, on=keys, suffixes=("_base", "_new"))
        m = m[np.isfinite(m["se_base"].astype(float))]
        z = ((m["estimate_new"] - m["estimate_base"]) / m["se_base"]).abs()
        se = (m["se_new"] / m["se_base"] - 1).abs()
        return {"compare": "adjusted", "terms": len(m), "same_terms": sorted(map(tuple, a[keys].to_numpy())) == sorted(map(tuple, b[keys].to_numpy())),
                "max_abs_estimate_diff_in_se": float(z.max()), "max_rel_se_diff": float(se.max()),
                "per_model": {k: {"max_diff_in_se": float(z[m["model"] == k].max()), "max_rel_se_diff": float(se[m["model"] == k].max())}
                              for k in sorted(m["model"].unique())}}  # fmt: skip
    out = {"compare": "outputs"}
    for name in sorted(p.stem for p in current.glob("*.pkl") if p.stem != "adjusted"):
        a, b = pd.read_pickle(base / f"{name}.pkl"), pd.read_pickle(current / f"{name}.pkl")
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
            out[f"{name}_identical"] = True
        except AssertionError as exc:
            out[f"{name}_identical"] = False
            numeric = [c for c in a.columns if pd.api.types.is_float_dtype(a[c]) and c in b.columns]
            if a.shape == b.shape and numeric:
                diff = (a[numeric].astype(float) - b[numeric].astype(float)).abs().to_numpy()
                out[f"{name}_max_abs_difference"] = float(np.nanmax(diff)) if np.isfinite(diff).any() else None
            out[f"{name}_difference"] = str(exc)[:200]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=("percentile", "bca"), default="percentile")
    parser.add_argument("--demo-like", action="store_true")
    parser.add_argument("--adjusted", action="store_true", help="the adjusted model alone (one structure, linear + logit), at --cases")
    parser.add_argument("--statsmodels-check", choices=("dense", "sparse"), help="--adjusted without --baseline: also refit each design with "
                        "statsmodels MixedLM (dense or sparse patient design) and compare")
    parser.add_argument("--compare", action="store_true", help="paired model comparison alone (unstratified patient bootstrap), at --cases")
    parser.add_argument("--gap-test", choices=("auto", "permutation"), default="auto")
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--baseline", type=Path, help="checkout of the previous code, measured in the same invocation")
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)  # where a child run writes its outputs
    args = parser.parse_args()
    if args.baseline is None:
        print(json.dumps(_measure(args)), flush=True)
        return
    child_args = [a for a in sys.argv[1:]]
    i = child_args.index("--baseline")
    del child_args[i : i + 2]
    with tempfile.TemporaryDirectory() as tmp:
        for name, checkout in (("baseline", args.baseline.resolve()), ("current", HERE)):
            out = Path(tmp) / name
            out.mkdir()
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_args, "--save", str(out)], cwd=checkout, env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"{checkout}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            print(json.dumps({"code": name, **json.loads(proc.stdout.strip().splitlines()[-1])}), flush=True)
        print(json.dumps(_compare(Path(tmp) / "baseline", Path(tmp) / "current", args.adjusted)), flush=True)


if __name__ == "__main__":
    main()
