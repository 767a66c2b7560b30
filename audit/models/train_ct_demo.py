"""Train the packaged CT demo model: a small MONAI UNet labelling vertebrae (VerSe codes) on synthetic CT.

Run (CPU, a few minutes on 2 cores)::

    python -m audit.models.train_ct_demo --out audit/models

It writes ``ct_demo_unet.pt`` (a state dict) and the model card ``ct_demo_unet.json`` (network, label map
``verse``: output channel k is VerSe label k, declared preprocessing with a fixed HU window, inference settings,
sha256, size, training time, the command, and per-vertebra validation on held-out cases of the training sources
and of the unseen hard source). Training sees :func:`audit.synthetic.ct_cohort.ct_training_sources` only (every
source but the low-dose COVID-19-like one). Images go through :func:`audit.inference.prepare_image` with the
card's preprocessing, the same code path as inference.
"""

from __future__ import annotations

import argparse
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

__all__ = ["CT_CARD_TEMPLATE", "train", "main"]

#: Output channels: 0 background and every VerSe code up to 28 (T13), so argmax is the VerSe label itself.
N_CLASSES = 29

CT_CARD_TEMPLATE: dict[str, Any] = {
    "format_version": 1,
    "name": "spine-audit-ct-demo-unet",
    "description": "Small 3-D MONAI UNet labelling thoracolumbar vertebrae (VerSe codes) on synthetic CT in HU. "
    "Trained on synthetic data only; for demonstrating CT audits, not for clinical use.",
    "kind": "checkpoint",
    "path": "ct_demo_unet.pt",
    "network": {
        "name": "UNet",
        "args": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": N_CLASSES,
            "channels": [8, 16, 32, 48],
            "strides": [2, 2, 2],
            "num_res_units": 0,
            "norm": "BATCH",
        },
    },
    "labels": "verse",
    "preprocessing": {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "intensity": {"method": "ct_window", "hu_min": -500, "hu_max": 1300}},
    "inference": {"roi_size": None, "divisible_by": [8, 8, 8], "device": "auto", "amp": True, "tta_flips": [], "mode": "gaussian"},
    "intended_use": "Demonstration of spine-audit's CT audit on its synthetic CT cohort (the low-dose hard source is out of distribution).",
    "limitations": "Synthetic training data (block-shaped vertebrae T9..L6); no real anatomy; untested on real patients.",
    "license": "Apache-2.0",
}


def _pad_crop(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad axis 2 to ``depth`` (edge value for the image, background for the label) or take a random window of it."""
    n = image.shape[2]
    if n < depth:
        before = int(rng.integers(0, depth - n + 1))
        pad = ((0, 0), (0, 0), (before, depth - n - before))
        return np.pad(image, pad, mode="edge"), np.pad(label, pad)
    start = int(rng.integers(0, n - depth + 1))
    return image[..., start : start + depth], label[..., start : start + depth]


def validate(network: torch.nn.Module, cases: list[Any], spec: Any) -> dict[str, float]:
    """Identification rate, mean per-vertebra Dice and off-by-one share over ``cases`` (VerSe definitions)."""
    from audit.metrics.vertebrae import evaluate_vertebrae

    network.eval()
    tables = []
    for i, case in enumerate(cases):
        grid = prepare_image(Volume(case.image.astype(np.float32), case.affine), spec.preprocessing)
        labels, _ = predict_labels_with_retry(network, grid.array, spec.inference, device=torch.device("cpu"))
        native = resample_to_grid(labels, grid.affine, case.label.shape, case.affine, order=0).astype(np.uint8)
        tables.append(evaluate_vertebrae(case.label, native, spacing=case.spacing, case_id=str(i)))
    import pandas as pd

    t = pd.concat(tables)
    ref = t[t["in_reference"]]
    return {
        "identification_rate": round(float(ref["identified"].mean()), 4),
        "dice_mean": round(float(ref["dice"].mean()), 4),
        "off_by_one_share": round(float((ref["error"] == "off_by_one").mean()), 4),
        "vertebrae": int(len(ref)),
    }


def train(out_dir: Path, *, n_train: int = 60, n_val: int = 12, steps: int = 300, batch_size: int = 2, seed: int = 0,
          depth: int = 80, lr: float = 5e-3, threads: int = 2) -> dict[str, Any]:
    """Train the CT demo UNet and write ``ct_demo_unet.pt`` and ``ct_demo_unet.json`` into ``out_dir``; return the card."""
    from audit.synthetic.ct_cohort import ct_training_sources, iter_ct_training_cases

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = model_spec_from_dict({**CT_CARD_TEMPLATE, "path": "unused.pt", "inference": dict(CT_CARD_TEMPLATE["inference"], device="cpu", amp=False)},
                                base_dir=out_dir)
    t0 = time.perf_counter()
    prepared = []
    for case in iter_ct_training_cases(n_train, seed):
        grid = prepare_image(Volume(case.image.astype(np.float32), case.affine), spec.preprocessing)
        prepared.append((grid.array, prepare_label(Volume(case.label, case.affine), grid)))
    sources = [s.name for s in ct_training_sources()]
    logger.info("prepared %d training cases from %s in %.1f s", n_train, sources, time.perf_counter() - t0)
    assert spec.network is not None
    network = build_network(spec.network)
    fit_segmentation(network, lambda: _pad_crop(rng, *prepared[int(rng.integers(len(prepared)))], depth), steps=steps, batch_size=batch_size, lr=lr,
                     log_every=25)
    train_seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "ct_demo_unet.pt"
    torch.save(network.state_dict(), weights)
    return write_card(out_dir, network, spec, n_train=n_train, n_val=n_val, steps=steps, batch_size=batch_size, seed=seed, depth=depth, lr=lr,
                      threads=threads, train_seconds=train_seconds)


def write_card(out_dir: Path, network: torch.nn.Module, spec: Any, *, n_train: int, n_val: int, steps: int, batch_size: int, seed: int, depth: int,
               lr: float, threads: int, train_seconds: float) -> dict[str, Any]:
    """Validate the trained network and write ``ct_demo_unet.json`` beside ``ct_demo_unet.pt``."""
    from audit.synthetic.ct import CT_HARD_SOURCE, CT_SOURCES
    from audit.synthetic.ct_cohort import ct_training_sources, iter_ct_training_cases

    weights = out_dir / "ct_demo_unet.pt"
    sources = [s.name for s in ct_training_sources()]
    hard = [s for s in CT_SOURCES if s.name == CT_HARD_SOURCE]
    card = dict(CT_CARD_TEMPLATE)
    card["sha256"] = file_sha256(weights)
    card["size_bytes"] = weights.stat().st_size
    card["training"] = {
        "command": f"python -m audit.models.train_ct_demo --out audit/models --n-train {n_train} --steps {steps} --seed {seed}",
        "data": f"audit.synthetic.ct_cohort.iter_ct_training_cases(n={n_train}, seed={seed}): sources {sources} (hard source {CT_HARD_SOURCE} excluded)",
        "seed": seed, "steps": steps, "batch_size": batch_size, "depth": depth,
        "optimizer": f"AdamW lr={lr} one-cycle, weight_decay=1e-4; loss DiceCE over {N_CLASSES} classes",
        "threads": threads, "train_seconds": round(train_seconds, 1), "torch": torch.__version__,
        "note": "Measured on a 2-core machine shared with other jobs; CPU training is deterministic for a given torch build and thread count.",
    }
    card["validation"] = {
        "definition": "VerSe per-vertebra evaluation on the native grid (audit.metrics.vertebrae), pooled over vertebrae",
        "in_distribution": {"cases": n_val, "data": f"iter_ct_training_cases(n={n_val}, seed={seed + 1})",
                            **validate(network, list(iter_ct_training_cases(n_val, seed + 1)), spec)},
        "hard_source": {"cases": n_val // 2, "data": f"iter_ct_training_cases(n={n_val // 2}, seed={seed + 2}, sources=[{CT_HARD_SOURCE}])",
                        **validate(network, list(iter_ct_training_cases(n_val // 2, seed + 2, hard)), spec)},
    }
    (out_dir / "ct_demo_unet.json").write_text(json.dumps(card, indent=2) + "\n")
    logger.info("wrote %s (%d bytes); validation %s", weights, card["size_bytes"], card["validation"])
    return card


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-val", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card-only", type=float, default=None, metavar="TRAIN_SECONDS",
                        help="validate existing weights in --out and write the card (training time as measured by the training run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logger.info("command: %s", shlex.join(sys.argv))
    if args.card_only is not None:
        spec = model_spec_from_dict({**CT_CARD_TEMPLATE, "path": "unused.pt", "inference": dict(CT_CARD_TEMPLATE["inference"], device="cpu", amp=False)},
                                    base_dir=args.out)
        assert spec.network is not None
        network = build_network(spec.network)
        network.load_state_dict(torch.load(args.out / "ct_demo_unet.pt", weights_only=True))
        card = write_card(args.out, network, spec, n_train=args.n_train, n_val=args.n_val, steps=args.steps, batch_size=2, seed=args.seed, depth=80,
                          lr=5e-3, threads=2, train_seconds=args.card_only)
    else:
        card = train(args.out, n_train=args.n_train, n_val=args.n_val, steps=args.steps, seed=args.seed)
    logger.info("validation: %s", json.dumps(card["validation"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
