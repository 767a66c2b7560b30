"""Model specification parsing, builtin demo model, device choice, AMP context, nnU-Net guard and folder checks."""

from __future__ import annotations

import json

import pytest
import torch

from audit.inference import (
    NNUNET_INSTALL_HINT,
    autocast_context,
    load_model,
    model_spec_from_dict,
    select_device,
    validate_nnunet_folder,
)
from audit.inference.spec import BUILTIN_MODELS

BASE = {"kind": "checkpoint", "path": "m.pt", "labels": "spine_audit", "network": {"name": "UNet", "args": {}}}


@pytest.mark.parametrize(
    "patch, field, found",
    [
        ({"kind": "onnx"}, "model.kind", "'onnx'"),
        ({"labels": {1: "vertebra_body"}}, "model.labels", "vertebra_body"),
        ({"network": None}, "model.network", "None"),
        ({"inference": {"overlap": 1.5}}, "model.inference.overlap", "1.5"),
        ({"inference": {"roi_size": [64, 64]}}, "model.inference.roi_size", "[64, 64]"),
        ({"inference": {"device": "tpu"}}, "model.inference.device", "'tpu'"),
        ({"inference": {"tta_flips": [[3]]}}, "model.inference.tta_flips", "[[3]]"),
        ({"preprocessing": {"spacing": [1, 1]}}, "model.preprocessing.spacing", "[1, 1]"),
        ({"preprocessing": {"orientation": "RAR"}}, "model.preprocessing.orientation", "'RAR'"),
        ({"sha256": "abc"}, "model.sha256", "'abc'"),
        ({"weights": "x"}, "model: unknown keys", "weights"),
    ],
    ids=["kind", "labels", "network", "overlap", "roi", "device", "flips", "spacing", "orientation", "sha", "unknown-key"],
)
def test_spec_errors_name_field_and_value(patch, field, found, tmp_path):
    with pytest.raises(ValueError) as info:
        model_spec_from_dict({**BASE, **patch}, base_dir=tmp_path)
    msg = str(info.value)
    assert field in msg and found in msg, msg


def test_spec_paths_resolve_against_base_dir(tmp_path):
    spec = model_spec_from_dict({**BASE, "inference": {"roi_size": [16, 96, 144], "tta_flips": [[0], [1, 2]]}}, base_dir=tmp_path)
    assert spec.path == tmp_path / "m.pt"
    assert spec.inference.roi_size == (16, 96, 144) and spec.inference.tta_flips == ((0,), (1, 2))
    assert spec.labels.name == "spine_audit" and spec.preprocessing.orientation == "RAS"


def test_model_labels_take_the_site_label_map_forms(tmp_path):
    """A name, a {value: structure} mapping, or {values, ignore} (values the model emits that are not spine)."""
    plain = model_spec_from_dict({**BASE, "labels": {1: "vertebral_body", 2: "intervertebral_disc"}}, base_dir=tmp_path)
    assert dict(plain.labels.values) == {1: "vertebral_body", 2: "intervertebral_disc"} and not plain.labels.ignore
    ignoring = model_spec_from_dict({**BASE, "labels": {"values": {1: "vertebral_body"}, "ignore": [9]}}, base_dir=tmp_path)
    assert dict(ignoring.labels.values) == {1: "vertebral_body"} and ignoring.labels.ignore == frozenset({9})
    with pytest.raises(ValueError, match=r"model.labels: .*allowed keys"):
        model_spec_from_dict({**BASE, "labels": {"values": {1: "vertebral_body"}, "drop": [9]}}, base_dir=tmp_path)


def test_builtin_demo_model_loads_and_matches_its_card(tmp_path):
    card_path = BUILTIN_MODELS["demo-unet"]
    if not card_path.is_file():
        pytest.skip("demo model not trained yet (python -m audit.models.train_demo)")
    card = json.loads(card_path.read_text())
    spec = model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet"}, base_dir=tmp_path)
    model = load_model(spec, device="cpu")
    assert model.sha256 == card["sha256"] and model.device.type == "cpu"
    assert model.label_map.structures == ("vertebral_body", "intervertebral_disc", "spinal_canal", "spinal_cord")
    assert (card_path.parent / card["path"]).stat().st_size == card["size_bytes"] < 10 * 2**20
    # a protocol may override inference settings of the builtin card
    fast = model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet", "inference": {"sw_batch_size": 1}}, base_dir=tmp_path)
    assert fast.inference.sw_batch_size == 1 and fast.sha256 == card["sha256"]


def test_select_device():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="allowed values"):
        select_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


# constructing a CUDA autocast on a CPU-only build warns that it is disabled; the object is what we check
@pytest.mark.filterwarnings("ignore:CUDA is not available or torch_xla is imported:UserWarning")
def test_autocast_only_on_cuda():
    ctx = autocast_context(torch.device("cuda"), True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    assert not isinstance(autocast_context(torch.device("cpu"), True), torch.autocast)
    assert not isinstance(autocast_context(torch.device("cuda"), False), torch.autocast)


def nnunet_folder(root, folds=(0,)):
    """The files of an nnU-Net v2 trained-model folder (contents are placeholders: only the layout is checked)."""
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "vertebral_body": 1}, "channel_names": {"0": "T2"}}))
    (root / "plans.json").write_text("{}")
    for f in folds:
        (root / f"fold_{f}").mkdir()
        (root / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"placeholder")
    return root


def test_nnunet_folder_validation(tmp_path):
    folder = nnunet_folder(tmp_path / "Dataset001", folds=(0, 2))
    assert validate_nnunet_folder(folder) == ("0", "2")
    assert validate_nnunet_folder(folder, folds=(2,)) == ("2",)
    with pytest.raises(FileNotFoundError, match=r"folds .*'1'"):
        validate_nnunet_folder(folder, folds=(1,))
    (folder / "plans.json").unlink()
    with pytest.raises(FileNotFoundError, match="plans.json"):
        validate_nnunet_folder(folder)


def test_nnunet_without_the_extra_names_the_install_command(tmp_path, monkeypatch):
    import audit.inference.nnunet as nnunet_module

    monkeypatch.setattr(nnunet_module, "nnunet_available", lambda: False)  # as on a machine without the extra
    folder = nnunet_folder(tmp_path / "Dataset001")
    spec = model_spec_from_dict({"kind": "nnunet", "path": str(folder), "labels": {1: "vertebral_body"}}, base_dir=tmp_path)
    with pytest.raises(ImportError) as info:
        load_model(spec, device="cpu")
    assert NNUNET_INSTALL_HINT in str(info.value) and "spine-audit[nnunet]" in str(info.value)
