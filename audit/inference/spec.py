"""The model specification: the protocol's ``model:`` section or a model card, parsed and validated.

Errors name the field path (``model.inference.overlap``), the allowed values and the value found.
``path: builtin:demo-unet`` resolves to the packaged demo model card (``audit/models/demo_unet.json``), whose
fields fill in whatever the protocol leaves out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from audit.errors import ModelSpecError
from audit.harmonize.intensity import IntensitySpec, intensity_spec_from
from audit.harmonize.labels import resolve_label_map
from audit.ontology import LabelMap

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_KINDS",
    "ModelSpecError",
    "DEVICES",
    "BUILTIN_MODELS",
    "NetworkSpec",
    "PreprocessingSpec",
    "InferenceSettings",
    "ModelSpec",
    "model_spec_from_dict",
    "load_model_card",
]

MODEL_KINDS: tuple[str, ...] = ("torchscript", "checkpoint", "monai_bundle", "nnunet", "predictions")
DEVICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")
_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: ``builtin:<name>`` -> model card shipped with the package.
BUILTIN_MODELS: Mapping[str, Path] = MappingProxyType({"demo-unet": _MODELS_DIR / "demo_unet.json"})
_SPEC_KEYS = {"name", "kind", "path", "network", "labels", "preprocessing", "inference", "sha256", "options"}
#: Documentation-only keys a model card may carry; ignored by the parser.
_CARD_KEYS = {"description", "training", "validation", "size_bytes", "license", "intended_use", "limitations", "format_version"}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A MONAI network by class name (``monai.networks.nets.<name>``) and constructor arguments."""

    name: str
    args: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "args": _thaw(self.args)}


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """Preprocessing a model declares; applied identically in training and inference.

    Parameters
    ----------
    orientation : str
        Canonical orientation codes (``"RAS"``) the array is reoriented to (exact axis shuffle).
    spacing : tuple of 3 floats or None
        Voxel size (mm, per canonical axis) to resample to; None keeps the native spacing.
    intensity : IntensitySpec
        Intensity normalisation.
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = None
    intensity: IntensitySpec = dataclasses.field(default_factory=IntensitySpec)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "orientation": self.orientation,
            "spacing": None if self.spacing is None else list(self.spacing),
            "intensity": self.intensity.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """Sliding-window and device settings.

    Parameters
    ----------
    roi_size : tuple of int or None
        Sliding-window patch size (canonical axes); None runs the whole volume at once
        (padded to a multiple of ``divisible_by``).
    overlap : float
        Window overlap in [0, 1).
    sw_batch_size : int
        Windows per forward pass; halved on CUDA out-of-memory.
    device : str
        ``auto`` (cuda, then mps, then cpu) or an explicit device.
    amp : bool
        Mixed precision (float16 autocast) on CUDA; ignored elsewhere.
    tta_flips : tuple of tuples of int
        Test-time augmentation: each entry is a set of spatial axes to flip; the softmax outputs
        of the identity and every flip are averaged.
    mode : str
        Window blending, ``gaussian`` or ``constant``.
    divisible_by : tuple of int
        Whole-volume inference pads each axis to a multiple of this (the network's total stride).
    """

    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 2
    device: str = "auto"
    amp: bool = True
    tta_flips: tuple[tuple[int, ...], ...] = ()
    mode: str = "gaussian"
    divisible_by: tuple[int, int, int] = (1, 1, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()} | {"tta_flips": [list(f) for f in self.tta_flips]}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to audit.

    Parameters
    ----------
    name : str
        Display name.
    kind : str
        One of :data:`MODEL_KINDS`.
    path : Path or None
        Model file or folder (None only for ``predictions`` taken from the manifest's ``prediction_path``).
    labels : LabelMap
        Meaning of the model's output label values in the ontology.
    network : NetworkSpec or None
        Required for ``checkpoint``; optional override for ``monai_bundle``.
    preprocessing : PreprocessingSpec
        Declared preprocessing.
    inference : InferenceSettings
        Sliding-window and device settings.
    sha256 : str or None
        Expected digest of the model file (or folder); checked at load time when given.
    options : Mapping
        Kind-specific options (``predictions``: ``pattern``; ``nnunet``: ``folds``, ``checkpoint``;
        ``monai_bundle``: ``network_key``, ``weights``).
    """

    name: str
    kind: str
    path: Path | None
    labels: LabelMap
    network: NetworkSpec | None = None
    preprocessing: PreprocessingSpec = dataclasses.field(default_factory=PreprocessingSpec)
    inference: InferenceSettings = dataclasses.field(default_factory=InferenceSettings)
    sha256: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


def load_model_card(path: str | Path) -> dict[str, Any]:
    """Read a model card (JSON) as a plain dict."""
    return json.loads(Path(path).read_text())


def _err(field: str, allowed: str, found: Any) -> ModelSpecError:
    return ModelSpecError(f"model.{field}: {allowed}; found {found!r}")


def _int_tuple(value: Any, field: str, n: int = 3) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise _err(field, f"expected {n} positive integers", value)
    return tuple(int(v) for v in value)


def _parse_labels(value: Any) -> LabelMap:
    if isinstance(value, str) or (isinstance(value, Mapping) and value):
        try:
            return resolve_label_map(value, name="model")
        except (KeyError, ValueError) as exc:
            raise ModelSpecError(f"model.labels: {exc.args[0]}") from None
    raise _err("labels", "expected a label-map name, a mapping {value: structure} or {values: {...}, ignore: [...]}", value)


def _parse_preprocessing(value: Any, base_dir: Path) -> PreprocessingSpec:
    if value is None:
        return PreprocessingSpec()
    if not isinstance(value, Mapping):
        raise _err("preprocessing", "expected a mapping with orientation, spacing, intensity", value)
    extra = sorted(set(value) - {"orientation", "spacing", "intensity"})
    if extra:
        raise _err("preprocessing", "allowed keys ['intensity', 'orientation', 'spacing']", extra)
    spacing = value.get("spacing")
    if spacing is not None:
        if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in spacing):
            raise _err("preprocessing.spacing", "expected 3 positive numbers (mm) or null", spacing)
        spacing = tuple(float(s) for s in spacing)
    orientation = str(value.get("orientation", "RAS")).upper()
    axes = {c: {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c) for c in orientation}
    if len(orientation) != 3 or None in axes.values() or len(set(axes.values())) != 3:
        raise _err("preprocessing.orientation", "expected 3 distinct axis codes from L/R, A/P, S/I such as 'RAS'", value.get("orientation"))
    return PreprocessingSpec(orientation=orientation, spacing=spacing, intensity=intensity_spec_from(value.get("intensity"), base_dir=base_dir))


def _parse_inference(value: Any) -> InferenceSettings:
    if value is None:
        return InferenceSettings()
    if not isinstance(value, Mapping):
        raise _err("inference", "expected a mapping", value)
    fields = {f.name for f in dataclasses.fields(InferenceSettings)}
    extra = sorted(set(value) - fields)
    if extra:
        raise _err("inference", f"allowed keys {sorted(fields)}", extra)
    kw: dict[str, Any] = {}
    if value.get("roi_size") is not None:
        kw["roi_size"] = _int_tuple(value["roi_size"], "inference.roi_size")
    if "divisible_by" in value:
        kw["divisible_by"] = _int_tuple(value["divisible_by"], "inference.divisible_by")
    if "overlap" in value:
        ov = value["overlap"]
        if not isinstance(ov, (int, float)) or not 0 <= ov < 1:
            raise _err("inference.overlap", "expected a number in [0, 1)", ov)
        kw["overlap"] = float(ov)
    if "sw_batch_size" in value:
        bs = value["sw_batch_size"]
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise _err("inference.sw_batch_size", "expected a positive integer", bs)
        kw["sw_batch_size"] = bs
    if "device" in value:
        dev = str(value["device"])
        if dev.split(":")[0] not in DEVICES:
            raise _err("inference.device", f"allowed values {list(DEVICES)} (optionally 'cuda:N')", dev)
        kw["device"] = dev
    if "amp" in value:
        if not isinstance(value["amp"], bool):
            raise _err("inference.amp", "expected true or false", value["amp"])
        kw["amp"] = value["amp"]
    if "mode" in value:
        if value["mode"] not in ("gaussian", "constant"):
            raise _err("inference.mode", "allowed values ['constant', 'gaussian']", value["mode"])
        kw["mode"] = value["mode"]
    if "tta_flips" in value:
        flips = value["tta_flips"] or []
        ok = isinstance(flips, (list, tuple)) and all(
            isinstance(f, (list, tuple)) and f and all(isinstance(a, int) and 0 <= a <= 2 for a in f) for f in flips
        )
        if not ok:
            raise _err("inference.tta_flips", "expected a list of axis lists with spatial axes 0, 1, 2 (e.g. [[0], [2]])", flips)
        kw["tta_flips"] = tuple(tuple(int(a) for a in f) for f in flips)
    return InferenceSettings(**kw)


def _resolve_builtin(d: Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    path = d.get("path")
    if not (isinstance(path, str) and path.startswith("builtin:")):
        return dict(d), None
    key = path.split(":", 1)[1]
    if key not in BUILTIN_MODELS:
        raise _err("path", f"allowed builtin models {[f'builtin:{k}' for k in BUILTIN_MODELS]}", path)
    card_path = BUILTIN_MODELS[key]
    if not card_path.is_file():
        raise FileNotFoundError(f"model.path: builtin model card {card_path} is missing; run `python -m audit.models.train_demo --out audit/models`")
    merged = load_model_card(card_path)
    merged.update({k: v for k, v in d.items() if k != "path" and v is not None})
    return merged, card_path.parent


def model_spec_from_dict(d: Mapping[str, Any], *, base_dir: Path) -> ModelSpec:
    """Parse and validate a protocol ``model:`` section or a model card.

    Parameters
    ----------
    d : Mapping
        The section (see ``notes/contracts.md``: name, kind, path, network, labels, preprocessing,
        inference, sha256, options).
    base_dir : Path
        Folder that relative paths resolve against (the protocol's or the card's folder).

    Raises
    ------
    ModelSpecError
        (a ``ValueError``) naming the field path, the allowed values and the value found.
    """
    if not isinstance(d, Mapping):
        raise ModelSpecError(f"model: expected a mapping; found {type(d).__name__}")
    d, card_dir = _resolve_builtin(d)
    extra = sorted(set(d) - _SPEC_KEYS - _CARD_KEYS)
    if extra:
        raise ModelSpecError(f"model: unknown keys {extra}; allowed {sorted(_SPEC_KEYS)}")
    kind = d.get("kind")
    if kind not in MODEL_KINDS:
        raise _err("kind", f"allowed values {list(MODEL_KINDS)}", kind)
    root = card_dir if card_dir is not None else Path(base_dir)
    raw_path = d.get("path")
    if raw_path is None:
        if kind != "predictions":
            raise _err("path", "required for kind " + repr(kind), None)
        path = None
    else:
        path = Path(os.path.expandvars(str(raw_path))).expanduser()  # an unset ${VAR} stays and fails at load time
        path = path if path.is_absolute() else (root / path)
    network = None
    if d.get("network") is not None:
        net = d["network"]
        if not isinstance(net, Mapping) or not isinstance(net.get("name"), str):
            raise _err("network", "expected {name: <monai.networks.nets class>, args: {...}}", net)
        args = net.get("args", {}) or {}
        if not isinstance(args, Mapping):
            raise _err("network.args", "expected a mapping of constructor arguments", args)
        network = NetworkSpec(net["name"], _freeze(dict(args)))
    if kind == "checkpoint" and network is None:
        raise _err("network", "required for kind 'checkpoint' ({name: UNet, args: {...}})", None)
    if "labels" not in d:
        raise _err("labels", "required: the model's output label map (a known map name or {value: structure})", None)
    sha = d.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise _err("sha256", "expected 64 hexadecimal characters or null", sha)
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        raise _err("options", "expected a mapping", options)
    return ModelSpec(
        name=str(d.get("name") or (path.stem if path else "predictions")),
        kind=kind,
        path=path,
        labels=_parse_labels(d["labels"]),
        network=network,
        preprocessing=_parse_preprocessing(d.get("preprocessing"), root),
        inference=_parse_inference(d.get("inference")),
        sha256=sha.lower() if sha else None,
        options=_freeze(dict(options)),
    )
