"""Train the packaged demo model: a small MONAI UNet on synthetic cervical spine MRI of the non-hard sites.

Run (CPU, about 4 minutes on 2 cores)::

    python -m audit.models.train_demo --out audit/models

It writes ``demo_unet.pt`` (a state dict) and the model card ``demo_unet.json`` (network, label map,
declared preprocessing, inference settings, sha256, size, training time, the exact command, and
validation Dice per structure on held-out in-distribution cases and on the unseen hard site).

Training only sees :func:`audit.synthetic.training_sites` (every default site but the hard one), so the
model meets the hard site's noise, bias field and low contrast for the first time in an audit. Images go
through :func:`audit.inference.prepare_image` with the card's preprocessing, the same code path as
inference, so training and inference cannot drift.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.harmonize.geometry import Volume, file_sha256, resample_to_grid
from audit.inference.loaders import build_network
from audit.inference.predict import predict_labels_with_retry, prepare_image, prepare_label
from audit.inference.spec import model_spec_from_dict
from audit.models.training import fit_segmentation

logger = logging.getLogger(__name__)

__all__ = ["CARD_TEMPLATE", "train", "main"]

STRUCTURES = {1: "vertebral_body", 2: "intervertebral_disc", 3: "spinal_canal", 4: "spinal_cord"}

#: Everything of the model card but what training measures.
CARD_TEMPLATE: dict[str, Any] = {
    "format_version": 1,
    "name": "spine-audit-demo-unet",
    "description": "Small 3-D MONAI UNet segmenting vertebral bodies, discs, spinal canal (CSF) and cord on sagittal "
    "T2-like cervical MRI. Trained on synthetic data only; for demonstrating audits, not for clinical use.",
    "kind": "checkpoint",
    "path": "demo_unet.pt",
    "network": {
        "name": "UNet",
        "args": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 5,
            "channels": [8, 16, 32, 64],
            "strides": [[1, 2, 2], [1, 2, 2], [2, 2, 2]],
            "num_res_units": 0,
            "norm": "BATCH",
        },
    },
    "labels": {str(k): v for k, v in STRUCTURES.items()},
    "preprocessing": {"orientation": "RAS", "spacing": [3.0, 1.0, 1.0], "intensity": {"method": "percentile_zscore", "lower": 0.5, "upper": 99.5}},
    "inference": {"roi_size": [16, 96, 144], "overlap": 0.25, "sw_batch_size": 2, "device": "auto", "amp": True, "tta_flips": [], "mode": "gaussian"},
    "intended_use": "Demonstration of spine-audit on its synthetic cohort (the hard site and older patients' discs are out of its training distribution).",
    "limitations": "Synthetic training data; no real-scanner artefacts; untested on real patients.",
    "license": "Apache-2.0",
}


def _prepared(case: Any, prep: Any) -> tuple[np.ndarray, np.ndarray]:
    grid = prepare_image(Volume(case.image.astype(np.float32), case.affine), prep)
    return grid.array, prepare_label(Volume(case.label, case.affine), grid)


def _crop(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    pad = [(0, max(0, s - n)) for s, n in zip(size, image.shape)]
    if any(p[1] for p in pad):
        image, label = np.pad(image, pad), np.pad(label, pad)
    if rng.random() < 0.7:  # centre most crops on the spine so every class is seen often
        fg = np.argwhere(label > 0)
        centre = fg[rng.integers(len(fg))]
    else:
        centre = np.array([rng.integers(n) for n in image.shape])
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, image.shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(start, size))
    return image[sl], label[sl]


def dice_per_structure(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Volumetric Dice of each structure (NaN when absent from both)."""
    out = {}
    for value, name in STRUCTURES.items():
        p, r = pred == value, ref == value
        denom = p.sum() + r.sum()
        out[name] = float(2 * (p & r).sum() / denom) if denom else float("nan")
    return out


def _evaluate(network: torch.nn.Module, cases: list[Any], spec: Any) -> dict[str, float]:
    network.eval()
    scores = []
    for case in cases:
        grid = prepare_image(Volume(case.image.astype(np.float32), case.affine), spec.preprocessing)
        labels, _ = predict_labels_with_retry(network, grid.array, spec.inference, device=torch.device("cpu"))
        native = resample_to_grid(labels, grid.affine, case.label.shape, case.affine, order=0)
        scores.append(dice_per_structure(native, case.label))
    return {name: round(float(np.nanmean([s[name] for s in scores])), 4) for name in STRUCTURES.values()}


def train(out_dir: Path, *, n_train: int = 96, n_val: int = 16, steps: int = 1000, batch_size: int = 4, seed: int = 0,
          crop: tuple[int, int, int] = (16, 64, 64), lr: float = 3e-3, threads: int = 2) -> dict[str, Any]:
    """Train the demo UNet and write ``demo_unet.pt`` and ``demo_unet.json`` into ``out_dir``; return the card."""
    from audit.synthetic import DEFAULT_SITES, HARD_SITE, iter_training_cases, training_sites

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    inference_settings = dict(CARD_TEMPLATE["inference"], device="cpu", amp=False)
    spec = model_spec_from_dict({**CARD_TEMPLATE, "path": "unused.pt", "inference": inference_settings}, base_dir=out_dir)
    t0 = time.perf_counter()
    train_cases = [_prepared(c, spec.preprocessing) for c in iter_training_cases(n_train, seed=seed)]
    sites = [s.name for s in training_sites()]
    logger.info("prepared %d training cases from %s in %.1f s", n_train, sites, time.perf_counter() - t0)
    assert spec.network is not None
    network = build_network(spec.network)
    fit_segmentation(network, lambda: _crop(rng, *train_cases[int(rng.integers(len(train_cases)))], crop), steps=steps, batch_size=batch_size, lr=lr)
    train_seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "demo_unet.pt"
    torch.save(network.state_dict(), weights)
    val_in = list(iter_training_cases(n_val, seed=seed + 1))
    hard = [s for s in DEFAULT_SITES if s.name == HARD_SITE]
    val_hard = list(iter_training_cases(max(4, n_val // 2), seed=seed + 2, sites=hard))
    card = dict(CARD_TEMPLATE)
    card["sha256"] = file_sha256(weights)
    card["size_bytes"] = weights.stat().st_size
    card["training"] = {
        "command": "python -m audit.models.train_demo --out audit/models" + _non_default_args(n_train, n_val, steps, batch_size, seed),
        "data": f"audit.synthetic.iter_training_cases(n={n_train}, seed={seed}): sites {sites} (hard site {HARD_SITE} excluded), "
        "PlantedEffects() age effect on",
        "sites": sites,
        "n_cases": n_train,
        "n_patients": n_train,  # one synthetic patient per generated exam
        "date": dt.date.today().isoformat(),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "crop": list(crop),
        "optimizer": f"AdamW lr={lr} one-cycle, weight_decay=1e-4; loss DiceCE",
        "threads": threads,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "note": "CPU training is deterministic for a given torch build and thread count; other builds give close but not bit-identical weights.",
    }
    card["validation"] = {
        "definition": "volumetric Dice per structure on the native grid, mean over cases",
        "in_distribution": {"cases": n_val, "data": f"iter_training_cases(n={n_val}, seed={seed + 1})", "dice": _evaluate(network, val_in, spec)},
        "hard_site": {"cases": len(val_hard), "data": f"iter_training_cases(n={len(val_hard)}, seed={seed + 2}, sites=[{HARD_SITE}])",
                      "dice": _evaluate(network, val_hard, spec)},
    }
    (out_dir / "demo_unet.json").write_text(json.dumps(card, indent=2) + "\n")
    logger.info("wrote %s (%d bytes, sha256 %s); validation %s", weights, card["size_bytes"], card["sha256"], card["validation"])
    return card


def _non_default_args(n_train: int, n_val: int, steps: int, batch_size: int, seed: int) -> str:
    given = {"--n-train": (n_train, 96), "--n-val": (n_val, 16), "--steps": (steps, 1000), "--batch-size": (batch_size, 4), "--seed": (seed, 0)}
    return "".join(f" {k} {v}" for k, (v, d) in given.items() if v != d)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder (default: the package's models folder)")
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logger.info("command: %s", shlex.join(sys.argv))
    card = train(args.out, n_train=args.n_train, n_val=args.n_val, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    logger.info("validation Dice: %s", json.dumps(card["validation"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
