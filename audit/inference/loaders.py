"""Model loaders, one per kind: TorchScript, checkpoint + MONAI network, MONAI bundle, nnU-Net, predictions.

Every loader returns a :class:`LoadedModel` with the model's identity (``sha256`` of the file, or of every
file of a folder), its output :class:`~audit.ontology.LabelMap` and the device it runs on.

Loading never executes code from a model file or config (:mod:`audit.inference.trust`): weights are read
with ``torch.load(weights_only=True)``, network classes come from an allow-list, bundle configs are read as
data, and TorchScript/torch.export programs need an explicit, sha256-pinned opt-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from audit.harmonize.geometry import Volume, file_sha256
from audit.inference.predict import select_device
from audit.inference.spec import ModelSpec, NetworkSpec
from audit.inference.trust import bundle_network_definition, monai_network_class, read_bundle_config, require_code_opt_in, vet_model
from audit.ontology import LabelMap

logger = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "folder_sha256", "build_network"]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to run.

    Attributes
    ----------
    spec : ModelSpec
        The parsed specification.
    sha256 : str
        Digest of the model file, or of the folder (relative paths and bytes of every file, sorted).
    label_map : LabelMap
        Meaning of the output label values.
    device : torch.device
        Where the network runs.
    network : torch.nn.Module or callable or None
        ``(N, 1, X, Y, Z) -> (N, C, X, Y, Z)`` logits for network kinds; None otherwise.
    predict_volume : callable or None
        For kinds with their own preprocessing (nnU-Net): native image Volume -> label Volume.
    cpu_networks : dict
        Lazily filled CPU copy of ``network`` used after a CUDA out-of-memory fallback.
    """

    spec: ModelSpec
    sha256: str
    label_map: LabelMap
    device: torch.device
    network: Any = None
    predict_volume: Callable[[Volume], Volume] | None = None
    cpu_networks: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """The model kind (``spec.kind``)."""
        return self.spec.kind


def folder_sha256(folder: Path) -> str:
    """Digest of a folder: sha256 over each file's relative POSIX path and content sha256, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(folder).rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def build_network(net: NetworkSpec, *, field: str = "model.network") -> torch.nn.Module:
    """Instantiate ``monai.networks.nets.<name>(**args)`` for an allow-listed name (:data:`~audit.inference.trust.MONAI_NETWORKS`).

    Raises
    ------
    ValueError
        If the name is not an allow-listed MONAI network (:class:`~audit.inference.trust.UntrustedModelError`)
        or the arguments do not fit its constructor.
    """
    cls = monai_network_class(net.name, field=f"{field}.name")
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in net.args.items()}
    try:
        return cls(**args)
    except TypeError as exc:
        raise ValueError(f"{field}.args: do not fit {net.name}: {exc}") from None


def _load_state_dict(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model", "network", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.path: {path} is not a state dict (or a dict holding one under state_dict/model/network)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _checked_sha(spec: ModelSpec, actual: str) -> str:
    if spec.sha256 is not None and spec.sha256 != actual:
        raise ValueError(f"model.sha256: the model at {spec.path} has sha256 {actual}; the protocol expects {spec.sha256}")
    return actual


def _require(path: Path | None, *, folder: bool, kind: str) -> Path:
    if path is None or (folder and not path.is_dir()) or (not folder and not path.is_file()):
        what = "folder" if folder else "file"
        hint = " (an environment variable in the path is not set)" if path is not None and "$" in str(path) else ""
        raise FileNotFoundError(f"model.path: kind {kind!r} needs an existing {what}; found {str(path)!r}{hint}")
    return path


def _load_torchscript(spec: ModelSpec, device: torch.device) -> Any:
    path = _require(spec.path, folder=False, kind="torchscript")
    require_code_opt_in("torch.export" if path.suffix == ".pt2" else "TorchScript", path, spec.options, spec.sha256)
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module().to(device)
    with warnings.catch_warnings():
        # torch >= 2.10 deprecates TorchScript in favour of torch.export; loading existing files still works.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
        net = torch.jit.load(str(path), map_location=device)
    return net.eval()


def _load_checkpoint(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    path = _require(spec.path, folder=False, kind="checkpoint")
    assert spec.network is not None
    net = build_network(spec.network)
    try:
        net.load_state_dict(_load_state_dict(path, device))
    except RuntimeError as exc:
        raise ValueError(f"model.network: weights in {path} do not match {spec.network.name}{dict(spec.network.args)}: {exc}") from None
    return net.to(device).eval()


def _load_bundle(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    """A MONAI bundle's network from its config's network section, read as data (never MONAI's ConfigParser)."""
    folder = _require(spec.path, folder=True, kind="monai_bundle")
    configs = folder / "configs"
    candidates = [configs / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config_file = next((c for c in candidates if c.is_file()), None)
    weights = folder / str(spec.options.get("weights", "models/model.pt"))
    if not weights.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"model.options.weights: must be a file inside the bundle {folder}; found {spec.options.get('weights')!r}")
    if spec.network is not None:
        net = build_network(spec.network)
    else:
        if config_file is None:
            raise FileNotFoundError(f"model.path: MONAI bundle {folder} has no configs/inference.json|yaml and the protocol gives no network")
        key = str(spec.options.get("network_key", "network_def"))
        name, args = bundle_network_definition(read_bundle_config(config_file), key, source=config_file.name)
        net = build_network(NetworkSpec(name, args), field=f"{config_file.name}: {key}")
    if weights.suffix == ".ts":
        return _load_torchscript(dataclasses.replace(spec, path=weights), device)
    _require(weights, folder=False, kind="monai_bundle")
    net.load_state_dict(_load_state_dict(weights, device))
    return net.to(device).eval()


def load_model(spec: ModelSpec, *, device: str = "auto") -> LoadedModel:
    """Load a model of any kind onto a device.

    Parameters
    ----------
    spec : ModelSpec
        From :func:`~audit.inference.spec.model_spec_from_dict`.
    device : str
        ``auto`` uses ``spec.inference.device`` (itself ``auto`` by default: cuda, then mps, then cpu);
        any other value overrides it (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Raises
    ------
    FileNotFoundError, ValueError, ImportError
        A missing file, a sha256 mismatch, a bad network, or nnunetv2 not installed;
        :class:`~audit.inference.trust.UntrustedModelError` (a ``ValueError``) for anything that would run code.
    """
    vet_model(spec)  # nothing in a model file runs before its configs pass the allow-lists
    dev = select_device(spec.inference.device if device == "auto" else device)
    if spec.kind == "predictions":
        sha = folder_sha256(spec.path) if spec.path is not None else hashlib.sha256(b"predictions:manifest").hexdigest()
        if spec.path is not None:
            _require(spec.path, folder=True, kind="predictions")
        return LoadedModel(spec, _checked_sha(spec, sha), spec.labels, torch.device("cpu"))
    if spec.kind == "nnunet":
        from audit.inference.nnunet import load_nnunet

        folder = _require(spec.path, folder=True, kind="nnunet")
        sha = _checked_sha(spec, folder_sha256(folder))
        return LoadedModel(spec, sha, spec.labels, dev, predict_volume=load_nnunet(folder, spec.options, dev, spec.labels))
    assert spec.path is not None
    is_folder = spec.kind == "monai_bundle"
    if is_folder:
        _require(spec.path, folder=True, kind=spec.kind)
    sha = _checked_sha(spec, folder_sha256(spec.path) if is_folder else file_sha256(_require(spec.path, folder=False, kind=spec.kind)))
    loader = {"torchscript": _load_torchscript, "checkpoint": _load_checkpoint, "monai_bundle": _load_bundle}[spec.kind]
    network = loader(spec, dev)
    logger.info("loaded %s model %s (sha256 %s) on %s", spec.kind, spec.path, sha[:12], dev)
    return LoadedModel(spec, sha, spec.labels, dev, network=network)
