"""A tiny two-site nifti_table cohort with precomputed (perfect) predictions, for fuzzing one run at a time.

Named builders write one bad input each; :func:`write_protocol` points a protocol at the cohort with the
``predictions`` model kind (no network: a run takes seconds), so each robustness test can plant bad cases,
run the real CLI and check that every case is accounted for.
"""

from __future__ import annotations

import gzip
import zlib
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from audit import ontology

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SHAPE = (12, 10, 8)
SITES = ("site-A", "site-B")
GOOD_PER_SITE = 5
BODY, DISC = ontology.COARSE_VALUES["vertebral_body"], ontology.COARSE_VALUES["intervertebral_disc"]
HEADER = "case_id,patient_id,manufacturer,model,field_strength,age,sex,race,ethnicity\n"


def reference_labels(seed: int) -> np.ndarray:
    """Two stacked boxes (a vertebral body over a disc) at a seeded offset: never empty."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    x, y = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    labels[x : x + 6, y : y + 5, 1:4] = BODY
    labels[x : x + 6, y : y + 5, 4:6] = DISC
    return labels


def image_for(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return (100.0 * (labels > 0) + rng.normal(0, 5, SHAPE)).astype(np.float32)


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_case(cohort: Path, site: str, case: str, seed: int, *, sex: str = "F", age: int = 50) -> None:
    """A good case: image, reference label, metadata row and a perfect prediction."""
    labels = reference_labels(seed)
    save(image_for(labels, seed), cohort / site / "images" / f"{case}.nii.gz")
    save(labels, cohort / site / "labels" / f"{case}.nii.gz")
    save(labels, cohort / "predictions" / site / f"{case}.nii.gz")
    table = cohort / site / "metadata.csv"
    if not table.exists():
        table.write_text(HEADER)
    with table.open("a") as fh:
        fh.write(f"{case},p-{site}-{case},SIEMENS,Skyra,3,{age},{sex},White,Not Hispanic or Latino\n")


def build_cohort(root: Path) -> Path:
    """``GOOD_PER_SITE`` good cases at each of two sites, alternating sex."""
    for s, site in enumerate(SITES):
        for i in range(GOOD_PER_SITE):
            write_case(root, site, f"good{i}", seed=10 * s + i, sex="FM"[i % 2], age=30 + 7 * i)
    return root


def plant(cohort: Path, site: str, case: str, *, image: Callable[[Path], None] | None = None, label: Callable[[Path], None] | None = None,
          prediction: Callable[[Path], None] | None = None, seed: int = 99) -> str:
    """Add a good case, then overwrite its image, label or prediction with a bad-input writer; returns its case id."""
    write_case(cohort, site, case, seed)
    for writer, path in ((image, cohort / site / "images" / f"{case}.nii.gz"), (label, cohort / site / "labels" / f"{case}.nii.gz"),
                         (prediction, cohort / "predictions" / site / f"{case}.nii.gz")):
        if writer is not None:
            writer(path)
    return f"{site}/{case}"


def write_protocol(cohort: Path, *, limits: dict | None = None, model: dict | None = None) -> Path:
    """A protocol auditing the cohort's perfect predictions (Dice only, 100 bootstrap resamples)."""
    protocol = {
        "name": "robustness",
        "version": "1",
        "sites": [{"name": site, "format": "nifti_table", "root": site, "label_map": "spine_audit"} for site in SITES],
        "model": model or {"name": "perfect", "kind": "predictions", "path": "predictions", "labels": "spine_audit",
                           "options": {"pattern": "{site}/{local_id}.nii.gz"}},
        "structures": ["vertebral_body", "intervertebral_disc"],
        "metrics": {"names": ["dice"]},
        "subgroups": {"columns": ["site", "sex"], "age_bands": [18, 60, 120]},
        "statistics": {"bootstrap_iterations": 100, "min_group_size": 2, "adjusted_model": {"enabled": False}},
        "report": {"gallery_axes": ["site"], "worst_cases_per_group": 1},
    }
    if limits is not None:
        protocol["limits"] = limits
    path = cohort / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol, sort_keys=False))
    return path


def run_outputs(run: Path) -> dict:
    """The run's tables and results, for the accounting checks."""
    return {
        "manifest": pd.read_csv(run / "manifest.csv"),
        "metrics": pd.read_csv(run / "metrics.csv"),
        "failures": pd.read_csv(run / "failures.csv"),
        "results": json.loads((run / "results.json").read_text()),
        "report": (run / "report.html").read_text(encoding="utf-8"),
    }


def assert_counted(outputs: dict, case_id: str, *, stage: str, error_type: str, message: str) -> None:
    """The case failed with this kind and message, is in the manifest, only failed metric rows, and the report names it."""
    failures = outputs["failures"]
    mine = failures[failures["case_id"] == case_id]
    assert len(mine) >= 1, f"{case_id} not in failures.csv: {failures[['case_id', 'error_type']].to_dict('records')}"
    assert error_type in set(mine["error_type"]), mine[["stage", "error_type", "error"]].to_dict("records")
    row = mine[mine["error_type"] == error_type].iloc[0]
    assert row["stage"] == stage and message in row["error"], row.to_dict()
    assert case_id in set(outputs["manifest"]["case_id"])
    metrics = outputs["metrics"]
    statuses = set(metrics.loc[metrics["case_id"] == case_id, "status"])
    assert statuses == {"failed"}, f"{case_id} was scored: {statuses}"
    assert case_id in outputs["report"]


# ---- bad-input writers -------------------------------------------------------------------------------

def header_only_gz(shape: tuple[int, ...], dtype=np.uint8) -> bytes:
    """A gzip-compressed NIfTI-1 header (348 bytes) declaring ``shape``, and nothing else."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    return gzip.compress(header.binaryblock, compresslevel=9, mtime=0)


def honest_gzip_bomb(shape: tuple[int, int, int]) -> bytes:
    """A NIfTI whose header honestly declares ``shape`` (uint8 zeros): a small file that decompresses to prod(shape) bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    compressor = zlib.compressobj(9, wbits=31)
    parts = [compressor.compress(header.binaryblock + b"\0" * 4)]
    block = b"\0" * (1 << 20)
    total = int(np.prod(shape))
    for start in range(0, total, len(block)):
        parts.append(compressor.compress(block[: min(len(block), total - start)]))
    parts.append(compressor.flush())
    return b"".join(parts)


def lying_gzip_bomb(trailing_mb: int) -> bytes:
    """A valid small label (the declared SHAPE) followed, inside the gzip stream, by ``trailing_mb`` MiB of zeros."""
    img = nib.Nifti1Image(reference_labels(0), AFFINE)
    compressor = zlib.compressobj(9, wbits=31)
    parts = [compressor.compress(img.to_bytes())]
    block = b"\0" * (1 << 20)
    parts.extend(compressor.compress(block) for _ in range(trailing_mb))
    parts.append(compressor.flush())
    return b"".join(parts)
