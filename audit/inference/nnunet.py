"""nnU-Net v2 trained-model folders, run through nnunetv2's own predictor (optional extra).

nnU-Net does its own preprocessing (its plans fix orientation handling, spacing and normalisation), so
this loader bypasses spine-audit's preprocessing: it hands the native image to
``nnUNetPredictor.predict_single_npy_array`` in nnU-Net's NibabelIO axis convention (array axes reversed,
spacing reversed) and returns a label volume on the native image grid, which the runner then maps to the
reference grid. Install with ``pip install 'spine-audit[nnunet]'``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.harmonize.geometry import Volume

logger = logging.getLogger(__name__)

__all__ = ["NNUNET_INSTALL_HINT", "nnunet_available", "validate_nnunet_folder", "load_nnunet"]

NNUNET_INSTALL_HINT = "pip install 'spine-audit[nnunet]'"


def nnunet_available() -> bool:
    """True when ``nnunetv2`` can be imported."""
    return importlib.util.find_spec("nnunetv2") is not None


def validate_nnunet_folder(folder: Path, *, folds: tuple[int | str, ...] | None = None, checkpoint: str = "checkpoint_final.pth") -> tuple[str, ...]:
    """Check an nnU-Net v2 trained-model folder and return the folds found (or requested).

    A trained-model folder (``nnUNet_results/DatasetXXX/nnUNetTrainer__nnUNetPlans__3d_fullres``) holds
    ``dataset.json``, ``plans.json`` and ``fold_<k>/<checkpoint>``.

    Raises
    ------
    FileNotFoundError
        Naming the missing file.
    """
    folder = Path(folder)
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"model.path: nnU-Net folder {folder} lacks {name} (expected a trained-model folder with dataset.json, plans.json, fold_*/{checkpoint})")
    found = tuple(sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*") if (p / checkpoint).is_file()))
    wanted = tuple(str(f) for f in folds) if folds else found
    missing = [f for f in wanted if f not in found]
    if not wanted or missing:
        raise FileNotFoundError(f"model.options.folds: no {checkpoint} for folds {missing or 'any'} in {folder}; folds with a checkpoint: {list(found)}")
    json.loads((folder / "dataset.json").read_text())  # a corrupt dataset.json fails here with its name in the trace
    return wanted


def load_nnunet(folder: Path, options: Mapping[str, Any], device: torch.device) -> Callable[[Volume], Volume]:
    """Build a ``Volume -> label Volume`` predictor from an nnU-Net v2 trained-model folder.

    Options: ``folds`` (default: all found), ``checkpoint`` (``checkpoint_final.pth``), ``tile_step_size`` (0.5),
    ``use_mirroring`` (true).

    Raises
    ------
    ImportError
        When nnunetv2 is not installed (message names the install command).
    """
    checkpoint = str(options.get("checkpoint", "checkpoint_final.pth"))
    folds = validate_nnunet_folder(folder, folds=tuple(options.get("folds") or ()) or None, checkpoint=checkpoint)
    if not nnunet_available():
        raise ImportError(f"model.kind 'nnunet' needs the nnunetv2 package, which is not installed; run: {NNUNET_INSTALL_HINT}")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # pragma: no cover - optional dependency

    predictor = nnUNetPredictor(  # pragma: no cover
        tile_step_size=float(options.get("tile_step_size", 0.5)),
        use_mirroring=bool(options.get("use_mirroring", True)),
        device=device,
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(int(f) if f.isdigit() else f for f in folds), checkpoint_name=checkpoint)

    def predict(volume: Volume) -> Volume:  # pragma: no cover - needs nnunetv2
        data = np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0)[None]
        props = {"spacing": list(volume.spacing)[::-1]}
        seg = predictor.predict_single_npy_array(data, props, None, None, False)
        return Volume(np.asarray(seg).transpose(2, 1, 0).astype(np.uint16), volume.affine)

    return predict
