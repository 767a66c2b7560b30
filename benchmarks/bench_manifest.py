"""Benchmark: build the manifest of a 10,000-case ``nifti_table`` site (files present, not loaded).

Usage::

    python benchmarks/bench_manifest.py [--cases 10000] [--repeat 3]

Writes empty placeholder image/label files (the manifest stage only checks that files exist) and a
metadata CSV with site-flavoured raw strings, then times ``build_manifest`` and ``iter_site`` to the
first row. Record the printed numbers in docs/performance.md ("## Site adapters").
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from audit.sites import build_manifest, iter_site, load_site_config

VENDORS = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems", "TOSHIBA_MEC", "Siemens Healthineers"]
FIELDS = ["1.494", "3", "3.0T", "15000"]
AGES = ["045Y", "61", ">89", "006M", "33"]
SEXES = ["F", "M", "Female", "male", "O"]
RACES = ["White", "Black or African American", "Asian", "Not Reported", "Other"]


def make_site(root: Path, n: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = ["case_id,patient_id,manufacturer,model,field_strength,age,sex,race,ethnicity"]
    for i in range(n):
        cid = f"case{i:05d}"
        (root / "images" / f"{cid}.nii.gz").touch()
        (root / "labels" / f"{cid}.nii.gz").touch()
        lines.append(f"{cid},p{i // 2},{VENDORS[i % 5]},Model{i % 7},{FIELDS[i % 4]},{AGES[i % 5]},{SEXES[i % 5]},{RACES[i % 5]},Not Reported")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        t0 = time.perf_counter()
        make_site(root, args.cases)
        print(f"wrote {args.cases} cases in {time.perf_counter() - t0:.2f} s")
        config = load_site_config({"name": "bench", "format": "nifti_table", "root": str(root)})
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            manifest, failures = build_manifest([config])
            times.append(time.perf_counter() - t0)
        assert len(manifest) == args.cases and not failures
        t0 = time.perf_counter()
        next(iter_site(config))
        first = time.perf_counter() - t0
    best = min(times)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpu, python {platform.python_version()}")
    print(f"build_manifest({args.cases} cases): best {best:.2f} s of {args.repeat} ({args.cases / best:,.0f} cases/s); runs {[round(t, 2) for t in times]}")
    print(f"iter_site first row: {first * 1000:.0f} ms")


if __name__ == "__main__":
    main()
