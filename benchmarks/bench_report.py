"""Time render_report on synthetic run folders (48 and 1,000 cases) and on an existing run folder.

Run: ``python benchmarks/bench_report.py [--run RUN_DIR] [--repeats 3]``. Prints one JSON line per case.
The synthetic folders come from tests/report/report_builders.py (results.json written directly, 6 or 3 NIfTI
triplets for the gallery).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "report"))

from report_builders import synthetic_run

from audit.report import build_package, render_report


def bench(run: Path, label: str, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = render_report(run, out=run / "bench_report.html")
        times.append(time.perf_counter() - t0)
    html = out.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    package = build_package(run, run / "bench_package.zip") if (run / "report.html").is_file() else None
    package_s = time.perf_counter() - t0
    return {"run": label, "render_s_min": round(min(times), 2), "render_s_max": round(max(times), 2), "size_mb": round(len(html.encode()) / 2**20, 2),
            "images": html.count("<img "), "package_s": round(package_s, 2) if package else None,
            "package_mb": round(package.stat().st_size / 2**20, 2) if package else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="an existing run folder (e.g. a spine-audit demo output)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n, images in ((48, 6), (1000, 3)):
            run = synthetic_run(Path(tmp) / f"run{n}", n_cases=n, images=images)
            render_report(run)
            print(json.dumps(bench(run, f"synthetic-{n}", args.repeats)))
    if args.run:
        print(json.dumps(bench(args.run, str(args.run), args.repeats)))


if __name__ == "__main__":
    main()
