"""Scale benchmarks: the demo audit end to end per stage, and the metrics stage with 1 and 2 workers.

Each measurement can run the previous code in the same invocation (``--baseline DIR``: a checkout of the
older commit, e.g. ``git archive <commit> | tar -x -C /tmp/base``), in a fresh interpreter whose working directory
is that checkout, so both versions see the same machine state.

Usage::

    python benchmarks/bench_scale.py demo --cases 200 --workers 2 --baseline /tmp/base
    python benchmarks/bench_scale.py demo --cases 1255 --workers 2 --baseline /tmp/base --repeats 1
    python benchmarks/bench_scale.py metrics --cases 200 --baseline /tmp/base

``demo`` prints one JSON line per code version with the wall time of each stage (the pipeline's progress
clock: from a stage's first progress call to its last) and the total; ``metrics`` times the per-case metrics
stage alone (``evaluate_case`` over every case of a finished demo run) with 1 and 2 workers. Every line also
carries the CPU seconds of the measured processes (the interpreter and its joined pool workers), the peak RSS
of the largest one and the load averages (1, 5, 15 min) before and after: on a shared machine, wall times are
only comparable at similar load, CPU seconds are the stable measure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

#: Runs inside the checkout being measured (old or new code): only APIs both versions have.
_DEMO = textwrap.dedent(
    """
    import dataclasses, json, sys, time
    from audit.cli import demo_protocol_path
    from audit.pipeline import run_audit
    from audit.protocol import load_protocol
    n, out, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    p = load_protocol(demo_protocol_path())
    p = dataclasses.replace(p, synthetic_cohort=dataclasses.replace(p.synthetic_cohort, n_cases=n))
    marks = {}
    t0 = time.perf_counter()
    def progress(stage, done, total):
        now = time.perf_counter() - t0
        marks.setdefault(stage, [now, now])[1] = now
    run_audit(p, run_dir=out, device="cpu", workers=workers, progress=progress)
    total = time.perf_counter() - t0
    print(json.dumps({"total_s": round(total, 1), "stages_s": {k: round(v[1] - v[0], 1) for k, v in marks.items()},
                      "stage_start_s": {k: round(v[0], 1) for k, v in marks.items()}}))
    """
)

_METRICS = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import pandas as pd
    from audit.evaluate import EvaluationSettings, evaluate_case, metric_names
    from audit.execution import map_cases
    from audit.inference import load_model, model_spec_from_dict
    from audit.metrics import EmptyPolicy
    try:
        from audit.sites import resolve_sites
    except ImportError:  # older checkouts (a --baseline): in audit.pipeline
        from audit.pipeline import resolve_sites
    from audit.protocol import load_protocol
    from audit.cli import demo_protocol_path
    run = Path(sys.argv[1])
    protocol = load_protocol(demo_protocol_path())  # this checkout's demo protocol (the run's file may have newer keys)
    maps = {c.name: c.label_map for c in resolve_sites(protocol, run / "cohort")}
    model = load_model(model_spec_from_dict(protocol.model, base_dir=Path(protocol.base_dir)), device="cpu")
    names = metric_names(protocol.metrics.names, protocol.metrics.nsd_tolerances_mm)
    settings = EvaluationSettings(structures=protocol.structures, metrics=names,
                                  empty_policy=EmptyPolicy(missed_distance=protocol.metrics.missed_distance))
    manifest = pd.read_csv(run / "manifest.csv")
    absolute = lambda p: str(p if Path(p).is_absolute() else run / p)
    jobs = [((r.case_id,), dict(label_path=absolute(r.label_path), prediction_path=absolute(r.prediction_path), reference_map=maps[r.site],
             prediction_map=model.label_map, settings=settings, site=r.site)) for r in manifest.itertuples(index=False)]
    import os, resource
    def cpu():
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    import psutil
    def self_cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    out = {}
    for workers in (1, 2):
        t0, c0, s0, load0 = time.perf_counter(), cpu(), self_cpu(), os.getloadavg()[0]
        per_worker = []
        try:
            for i, _ in enumerate(map_cases(evaluate_case, jobs, workers=workers)):
                if i == len(jobs) - 1:  # the pool's workers are still alive: their CPU seconds, one by one
                    per_worker = [sum(c.cpu_times()[:2]) for c in psutil.Process().children(recursive=True)]
        except Exception as exc:  # the previous code's pool could not pickle label maps
            out[f"workers_{workers}_error"] = f"{type(exc).__name__}: {exc}"
            continue
        out[f"workers_{workers}_s"] = round(time.perf_counter() - t0, 2)
        out[f"workers_{workers}_cpu_s"] = round(cpu() - c0, 2)  # this process and its (joined) pool workers
        out[f"workers_{workers}_parent_cpu_s"] = round(self_cpu() - s0, 2)
        if per_worker:
            out[f"workers_{workers}_worker_cpu_s"] = [round(w, 2) for w in per_worker]
        out[f"workers_{workers}_load_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if "workers_2_s" in out:
        out["speedup"] = round(out["workers_1_s"] / out["workers_2_s"], 2)
    if out.get("workers_2_worker_cpu_s"):
        # on two idle cores the 2-worker wall time is at least the busiest worker's CPU time and at least half of all
        # CPU time (parent + workers); the serial run's CPU time over that bound is the speedup two idle cores allow
        bound = max(max(out["workers_2_worker_cpu_s"]), (out["workers_2_parent_cpu_s"] + sum(out["workers_2_worker_cpu_s"])) / 2)
        out["speedup_cpu_bound"] = round(out["workers_1_cpu_s"] / bound, 2)
    out["n_cases"] = len(jobs)
    print(json.dumps(out))
    """
)


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _run(code: str, checkout: Path, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter in ``checkout``; its JSON line plus CPU seconds, peak RSS and load averages.

    ``cpu_s`` is user + system time of the interpreter and every process it started and joined (pool workers),
    from ``getrusage(RUSAGE_CHILDREN)``; ``max_rss_mb`` is the largest single process among them.
    """
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before, load_before = resource.getrusage(resource.RUSAGE_CHILDREN), _loadavg()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=checkout, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "cpu_s": round(cpu, 1), "max_rss_mb": round(after.ru_maxrss / 1024),
            "load_avg_before": load_before, "load_avg_after": _loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["demo", "metrics"])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="demo: workers of the new code")
    parser.add_argument("--baseline-workers", type=int, help="demo: workers of the baseline (default: --workers)")
    parser.add_argument("--baseline", type=Path, help="checkout of the previous code, measured in the same run")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; each round runs baseline then current (interleaved under drifting load)")
    args = parser.parse_args()
    versions = [("baseline", args.baseline, args.baseline_workers or args.workers)] if args.baseline else []
    versions.append(("current", HERE, args.workers))
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "metrics":  # one finished run (current code, one torch thread), scored by each version
            _run("import torch; torch.set_num_threads(1)\n" + _DEMO, HERE, str(args.cases), str(Path(tmp) / "run"), "1")
        for round_ in range(1, args.repeats + 1):
            for name, checkout, workers in versions:
                if args.what == "demo":
                    out = Path(tmp) / f"{name}-{round_}"
                    result = _run(_DEMO, checkout, str(args.cases), str(out), str(workers))
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    result = _run(_METRICS, checkout, str(Path(tmp) / "run"))
                print(json.dumps({"benchmark": args.what, "code": name, "round": round_, "checkout": str(checkout), "cases": args.cases,
                                  "workers": workers, "cpu_count": os.cpu_count(), **result}), flush=True)


if __name__ == "__main__":
    main()
