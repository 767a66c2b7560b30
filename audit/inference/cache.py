"""The prediction cache: content-addressed NIfTI files, written atomically.

A prediction is stored under a key that hashes everything its voxels depend on: the model's sha256, the
image file's sha256, the reference grid (shape and affine), the declared preprocessing and the inference
settings that change outputs (window, overlap, blending, flips, AMP; not the device or window batch size,
so an out-of-memory fallback still hits the cache). A file exists only when complete (temporary file, then
``os.replace``), so a run killed at any moment resumes with nothing lost and nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from audit.inference.spec import InferenceSettings, PreprocessingSpec

logger = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "cache_key", "cache_path", "clean_temporary_files"]

#: Bump when the prediction code changes outputs for the same inputs.
CACHE_VERSION = 1


def cache_key(
    *,
    model_sha256: str,
    image_sha256: str,
    reference_shape: tuple[int, ...],
    reference_affine: np.ndarray,
    preprocessing: PreprocessingSpec,
    inference: InferenceSettings,
    extra: dict[str, Any] | None = None,
) -> str:
    """SHA-256 of a canonical JSON document of every input that determines a prediction."""
    settings = inference.to_dict()
    doc = {
        "version": CACHE_VERSION,
        "model": model_sha256,
        "image": image_sha256,
        "reference_shape": [int(s) for s in reference_shape],
        "reference_affine": np.round(np.asarray(reference_affine, dtype=float), 5).tolist(),
        "preprocessing": preprocessing.to_dict(),
        "inference": {k: settings[k] for k in ("roi_size", "overlap", "mode", "tta_flips", "amp", "divisible_by")},
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    """Where the prediction with ``key`` lives (two-character fan-out folders)."""
    return Path(cache_dir) / key[:2] / f"{key}.nii.gz"


def clean_temporary_files(cache_dir: Path) -> int:
    """Delete temporary files left by killed runs (writer process gone); returns how many were removed."""
    n = 0
    for p in Path(cache_dir).glob("*/.*.tmp.nii*"):
        pid = p.name.split(".tmp")[0].rsplit(".", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        p.unlink(missing_ok=True)
        n += 1
    if n:
        logger.info("removed %d temporary files of an interrupted run in %s", n, cache_dir)
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
