"""Model loading never executes code: allow-listed networks, bundle configs read as data, nnU-Net plans vetted.

Each hostile config would create a file if it were evaluated; the tests check that spine-audit refuses it and
the file does not exist, and (the control) that MONAI's ConfigParser or nnunetv2's ``pydoc.locate`` — what
the loaders used before — does create it from the same config.
"""

from __future__ import annotations

import contextlib
import json
import pydoc
import sys
import uuid
from pathlib import Path

import pytest
import torch

from audit.inference import UntrustedModelError, load_model, model_spec_from_dict
from audit.inference.trust import MONAI_NETWORKS, bundle_network_definition, check_nnunet_architecture
from inference_testlib import UNET_ARGS, ThresholdNet, save_torchscript, tiny_unet, trusted_program, write_bundle, write_nnunet_model

LABELS = {1: "vertebral_body", 2: "intervertebral_disc"}


def hostile_bundle(folder: Path, network_def: dict) -> Path:
    """A bundle whose configs/inference.json has ``network_def`` (weights of the tiny UNet, never reached)."""
    write_bundle(folder, tiny_unet())
    (folder / "configs" / "inference.json").write_text(json.dumps({"marker": "unused", "network_def": network_def}))
    return folder


def writes(marker: Path, source: Path) -> dict[str, dict]:
    """Network definitions that create ``marker`` when a config evaluator instantiates them."""
    copy = {"_target_": "shutil.copyfile", "src": str(source), "dst": str(marker)}
    return {
        "dollar-expression": {"_target_": "UNet", **UNET_ARGS, "spatial_dims": f"$__import__('pathlib').Path(r'{marker}').write_text('x') and 3"},
        "target-outside-allow-list": copy,
        "nested-target": {"_target_": "UNet", **UNET_ARGS, "act": copy},
        "requires": {"_target_": "UNet", **UNET_ARGS, "_requires_": f"$__import__('pathlib').Path(r'{marker}').write_text('x')"},
    }


@pytest.mark.parametrize("kind", ["dollar-expression", "target-outside-allow-list", "nested-target", "requires"])
def test_hostile_bundle_configs_are_refused_and_create_nothing(tmp_path, kind):
    marker = tmp_path / "pwned.txt"
    definition = writes(marker, tmp_path / "bundle" / "configs" / "metadata.json")[kind]
    folder = hostile_bundle(tmp_path / "bundle", definition)
    spec = model_spec_from_dict({"kind": "monai_bundle", "path": "bundle", "labels": LABELS, "inference": {"device": "cpu"}}, base_dir=tmp_path)
    with pytest.raises(UntrustedModelError, match="inference.json: network_def"):
        load_model(spec)
    assert not marker.exists()
    from monai.bundle import ConfigParser  # the control: MONAI's evaluator runs the same config

    with contextlib.suppress(Exception):  # the evaluator may fail after it has run the code
        ConfigParser(json.loads((folder / "configs" / "inference.json").read_text())).get_parsed_content("network_def")
    assert marker.exists(), "control: the config was supposed to be hostile"


def test_bundle_references_to_literals_are_resolved_and_the_network_loads(tmp_path):
    folder = tmp_path / "bundle"
    write_bundle(folder, tiny_unet())
    config = {"channels": UNET_ARGS["channels"], "net": {"_target_": "monai.networks.nets.UNet", **{**UNET_ARGS, "channels": "@channels"}}}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    assert bundle_network_definition(config, "net", source="inference.json") == ("UNet", {**UNET_ARGS, "channels": UNET_ARGS["channels"]})
    spec = model_spec_from_dict({"kind": "monai_bundle", "path": "bundle", "labels": LABELS, "options": {"network_key": "net"}, "inference": {"device": "cpu"}}, base_dir=tmp_path)
    reference = tiny_unet()
    model = load_model(spec)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model.network(x), reference.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["os.system", "TorchVisionFCModel", "monai.bundle.ConfigParser"])
def test_checkpoint_network_names_outside_the_allow_list_are_refused(tmp_path, name):
    torch.save(tiny_unet().state_dict(), tmp_path / "ckpt.pt")
    spec = model_spec_from_dict({"kind": "checkpoint", "path": "ckpt.pt", "labels": LABELS, "network": {"name": name, "args": {}}}, base_dir=tmp_path)
    with pytest.raises(UntrustedModelError, match=r"model.network.name: allowed MONAI networks are \[.*'UNet'"):
        load_model(spec)


def test_every_allow_listed_network_is_a_monai_class():
    import monai.networks.nets as nets

    assert all(isinstance(getattr(nets, n), type) and issubclass(getattr(nets, n), torch.nn.Module) for n in MONAI_NETWORKS)


@pytest.mark.parametrize(
    ("extra", "missing"),
    [({}, "allow_code"), ({"options": {"allow_code": True}}, "model.sha256"), ({"options": {"allow_code": "yes"}, "sha256": None}, "allow_code")],
    ids=["neither", "no-sha256", "not-true"],
)
def test_torchscript_needs_an_opt_in_and_a_pinned_sha256(tmp_path, extra, missing):
    path = save_torchscript(ThresholdNet(0.0), tmp_path / "net.pt")
    spec = model_spec_from_dict({"kind": "torchscript", "path": str(path), "labels": LABELS, **extra}, base_dir=tmp_path)
    with pytest.raises(UntrustedModelError, match=f"TorchScript program.*missing.*{missing}"):
        load_model(spec)
    trusted = model_spec_from_dict({"kind": "torchscript", "path": str(path), "labels": LABELS, "inference": {"device": "cpu"}, **trusted_program(path)}, base_dir=tmp_path)
    assert load_model(trusted).network is not None


def evil_module(folder: Path, marker: Path) -> str:
    """A module that creates ``marker`` when imported; returns its (unique) name."""
    name = f"spine_audit_evil_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath(r'{marker}').write_text('pwned')\nimport torch\n\n\nclass Net(torch.nn.Module):\n    pass\n"
    )
    return name


@pytest.mark.parametrize("field", ["network_class_name", "conv_op"])
def test_nnunet_plans_names_outside_the_allow_list_are_refused_before_import(tmp_path, monkeypatch, field):
    marker = tmp_path / "pwned.txt"
    monkeypatch.syspath_prepend(str(tmp_path / "path"))
    module = evil_module(tmp_path / "path", marker)
    folder = write_nnunet_model(tmp_path / "nnunet")
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    if field == "network_class_name":
        arch["network_class_name"] = f"{module}.Net"
    else:
        arch["arch_kwargs"]["conv_op"] = f"{module}.Net"
    (folder / "plans.json").write_text(json.dumps(plans))
    spec = model_spec_from_dict({"kind": "nnunet", "path": str(folder), "labels": "spine_audit", "inference": {"device": "cpu"}}, base_dir=tmp_path)
    with pytest.raises(UntrustedModelError, match=f"plans.json configurations.3d_fullres: architecture.*{field}: allowed are classes inside"):
        load_model(spec)
    assert not marker.exists() and module not in sys.modules
    assert pydoc.locate(f"{module}.Net") is not None and marker.exists(), "control: nnunetv2's pydoc.locate imports it"


@pytest.mark.parametrize(
    "dotted",
    ["torch.nn.modules.module.os.system", "torch.nn.__builtins__", "dynamic_network_architectures.architectures.unet.torch.load", "torch.nn.functional.relu"],
    ids=["reexported-os", "dunder", "function-inside-package", "not-a-class"],
)
def test_names_inside_allowed_packages_must_still_be_module_classes(dotted):
    kwargs = {"conv_op": dotted}
    with pytest.raises(UntrustedModelError, match="conv_op"):
        check_nnunet_architecture("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs, ["conv_op"], source="plans.json")


def test_the_shipped_nnunet_architecture_passes():
    check_nnunet_architecture(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        {"conv_op": "torch.nn.modules.conv.Conv3d", "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "dropout_op": None, "nonlin": "torch.nn.LeakyReLU"},
        ["conv_op", "norm_op", "dropout_op", "nonlin"],
        source="plans.json",
    )


def test_bundle_weights_outside_the_bundle_are_refused(tmp_path):
    write_bundle(tmp_path / "bundle", tiny_unet())
    torch.save(tiny_unet().state_dict(), tmp_path / "outside.pt")
    spec = model_spec_from_dict(
        {"kind": "monai_bundle", "path": "bundle", "labels": LABELS, "options": {"weights": "../outside.pt"}, "inference": {"device": "cpu"}}, base_dir=tmp_path
    )
    with pytest.raises(ValueError, match=r"model.options.weights: must be a file inside the bundle .*found '../outside.pt'"):
        load_model(spec)
