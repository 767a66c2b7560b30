"""Fuzz corpus, hostile model files: `spine-audit run` refuses each before any case is read or any file written.

A model-level error stops the run: ``run_audit`` raises :class:`UntrustedModelError` (one line naming the field),
the command exits 2 with that line and no traceback, no run folder is created, and the file the hostile config would create does not exist. (The unit tests in
tests/inference/test_inference_trust.py show that MONAI's ConfigParser and nnunetv2's pydoc.locate do create it.)
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from audit.cli import app
from audit.inference import UntrustedModelError
from audit.pipeline import run_audit
from audit.protocol import load_protocol
from robust_cohort import build_cohort, write_protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))  # the model builders of the inference tests
from inference_testlib import UNET_ARGS, ThresholdNet, save_torchscript, tiny_unet, write_bundle, write_nnunet_model  # noqa: E402


def bundle_with(root: Path, marker: Path, network_def: dict) -> dict:
    folder = root / "bundle"
    write_bundle(folder, tiny_unet())
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    return {"kind": "monai_bundle", "path": "bundle", "labels": "spine_audit"}


def evil_import(root: Path, marker: Path) -> str:
    """A module in ``root/path`` (on sys.path during the test) that creates ``marker`` when imported."""
    name = f"spine_audit_evil_{uuid.uuid4().hex[:8]}"
    (root / "path" / f"{name}.py").write_text(f"from pathlib import Path\nPath(r'{marker}').write_text('pwned')\n")
    return name


def nnunet_with(root: Path, marker: Path, field: str) -> dict:
    folder = write_nnunet_model(root / "nnunet")
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    target = f"{evil_import(root, marker)}.Net"
    if field == "network_class_name":
        arch["network_class_name"] = target
    else:
        arch["arch_kwargs"][field] = target
    (folder / "plans.json").write_text(json.dumps(plans))
    return {"kind": "nnunet", "path": "nnunet", "labels": "spine_audit"}


def _copy(marker: Path, root: Path) -> dict:
    source = root / "source.txt"
    source.write_text("x")
    return {"_target_": "shutil.copyfile", "src": str(source), "dst": str(marker)}


#: kind -> (model section builder, words the error must contain)
KINDS = {
    "bundle-dollar-expression": (
        lambda root, marker: bundle_with(root, marker, {"_target_": "UNet", **UNET_ARGS, "spatial_dims": f"$__import__('pathlib').Path(r'{marker}').write_text('x') and 3"}),
        "'$' expressions are code and are never evaluated",
    ),
    "bundle-target": (lambda root, marker: bundle_with(root, marker, _copy(marker, root)), "allowed MONAI networks are"),
    "bundle-nested-target": (
        lambda root, marker: bundle_with(root, marker, {"_target_": "UNet", **UNET_ARGS, "act": _copy(marker, root)}),
        "a nested object (['_target_']) would be instantiated",
    ),
    "checkpoint-network-name": (
        lambda root, marker: (torch.save(tiny_unet().state_dict(), root / "ckpt.pt"), {"kind": "checkpoint", "path": "ckpt.pt", "labels": "spine_audit", "network": {"name": "os.system", "args": {}}})[1],
        "model.network.name: allowed MONAI networks are",
    ),
    "torchscript-not-opted-in": (
        lambda root, marker: {"kind": "torchscript", "path": str(save_torchscript(ThresholdNet(0.0), root / "net.pt")), "labels": "spine_audit"},
        "net.pt is a TorchScript program",
    ),
    "nnunet-plans-class": (lambda root, marker: nnunet_with(root, marker, "network_class_name"), "network_class_name: allowed are classes inside"),
    "nnunet-plans-layer": (lambda root, marker: nnunet_with(root, marker, "nonlin"), "arch_kwargs.nonlin: allowed are classes inside"),
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("robust-models") / "cohort")


@pytest.mark.parametrize("kind", list(KINDS), ids=list(KINDS))
def test_hostile_model_is_refused_before_anything_runs(cohort, tmp_path, monkeypatch, kind):
    root = cohort / kind
    (root / "path").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(root / "path"))
    marker = tmp_path / "pwned.txt"
    build, message = KINDS[kind]
    model = build(root, marker)
    model["path"] = str(root / model["path"]) if not Path(model["path"]).is_absolute() else model["path"]
    protocol = write_protocol(cohort, model=model)
    run = tmp_path / "run"
    with pytest.raises(UntrustedModelError, match=re.escape(message)) as refused:
        run_audit(load_protocol(protocol), run_dir=run)
    assert "\n" not in str(refused.value)
    result = CliRunner().invoke(app, ["run", str(protocol), "--out", str(run), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = result.stderr.splitlines()  # one line on stderr
    assert line.startswith("Error: ") and message in line
    assert not marker.exists(), "the hostile config ran"
    assert not run.exists(), "a refused model must leave no run folder"
