"""Time the synthetic cohort generator: one case per site in memory, and a 48-case cohort on disk.

Run: ``python benchmarks/bench_synthetic.py`` (numbers go to docs/performance.md, "Synthetic cohort").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from audit.synthetic import DEFAULT_SITES, PlantedEffects, draw_patients, generate_case, generate_cohort


def main(repeats: int = 20) -> None:
    patients = draw_patients(np.random.default_rng(0), repeats)
    for profile in DEFAULT_SITES:
        generate_case(np.random.default_rng(0), profile, patients[0], PlantedEffects())  # warm-up
        times = []
        for i, patient in enumerate(patients):
            start = time.perf_counter()
            case = generate_case(np.random.default_rng(i), profile, patient, PlantedEffects())
            times.append(time.perf_counter() - start)
        print(f"{profile.name}: shape {case.image.shape} {case.axcodes} spacing {case.spacing}: "
              f"median {1000 * np.median(times):.1f} ms, max {1000 * np.max(times):.1f} ms per case")
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            info = generate_cohort(Path(tmp) / "cohort", n_cases=48, seed=0, workers=workers)
            elapsed = time.perf_counter() - start
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        print(f"generate_cohort(n_cases={info.n_cases}, workers={workers}): {elapsed:.2f} s, {size / 1e6:.1f} MB on disk")


if __name__ == "__main__":
    main()
