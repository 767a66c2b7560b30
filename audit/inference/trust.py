"""What a model file may make spine-audit do: the allow-lists, in one place (see ``docs/security.md``).

Model files and their configs are untrusted input. Loading a model never executes code from them:

* **Weights** are read with ``torch.load(weights_only=True)`` (tensors, containers, numbers; no pickled
  classes), for the ``checkpoint`` and ``monai_bundle`` kinds and nnU-Net checkpoints.
* **Network classes** come from allow-lists, never from an import of a name found in a file: MONAI
  networks by class name (:data:`MONAI_NETWORKS`, for ``model.network.name`` and a bundle's
  ``network_def``), nnU-Net ``plans.json`` architectures only inside :data:`NNUNET_ARCHITECTURE_PACKAGES`
  and their layer arguments only inside :data:`NNUNET_LAYER_PACKAGES` (checked here before nnunetv2
  resolves the names).
* **MONAI bundle configs** are read as data (``json``/``yaml.safe_load``); never through MONAI's
  ``ConfigParser``, which evaluates ``$`` expressions, imports any ``_target_`` and follows ``%`` macros.
  The network section may hold literals, ``@`` references to literals and one allow-listed ``_target_``.
* **TorchScript and torch.export programs** are code by design (PyTorch's security policy: treat them as
  locally executable code). They are loaded only when the protocol opts in with
  ``model.options.allow_code: true`` *and* pins the file's ``model.sha256``.

Every refusal raises :class:`~audit.errors.UntrustedModelError` (a user error: ``spine-audit run`` prints it as
one line and exits 2) naming the field, what is allowed and what was found.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from audit.errors import UntrustedModelError
from audit.inference.spec import ModelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "MONAI_NETWORKS",
    "NNUNET_ARCHITECTURE_PACKAGES",
    "NNUNET_LAYER_PACKAGES",
    "CODE_KINDS_OPTION",
    "UntrustedModelError",
    "monai_network_class",
    "read_bundle_config",
    "bundle_network_definition",
    "check_nnunet_architecture",
    "require_code_opt_in",
    "check_nnunet_plans",
    "vet_model",
]

#: ``monai.networks.nets`` classes a protocol or a bundle may name: 3-D segmentation networks whose
#: constructors take plain numbers, strings and lists and never download weights.
MONAI_NETWORKS: frozenset[str] = frozenset(
    {
        "AttentionUnet",
        "BasicUNet",
        "BasicUNetPlusPlus",
        "DynUNet",
        "HighResNet",
        "SegResNet",
        "SegResNetDS",
        "SegResNetVAE",
        "SwinUNETR",
        "UNet",
        "UNETR",
        "VNet",
    }
)
#: Packages an nnU-Net ``plans.json`` ``network_class_name`` may live in.
NNUNET_ARCHITECTURE_PACKAGES: tuple[str, ...] = ("dynamic_network_architectures", "monai.networks")
#: Packages the layer classes of ``arch_kwargs`` named in ``_kw_requires_import`` (conv_op, norm_op, ...) may live in.
NNUNET_LAYER_PACKAGES: tuple[str, ...] = ("torch.nn",)
#: The ``model.options`` key by which a protocol opts in to running a model's own program (TorchScript, torch.export).
CODE_KINDS_OPTION = "allow_code"

_MONAI_PREFIX = "monai.networks.nets."
_SPECIAL_KEYS = ("_target_", "_requires_", "_disabled_", "_desc_", "_mode_")
_MAX_REFERENCE_DEPTH = 8
_DOTTED = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


def monai_network_class(name: str, *, field: str = "model.network.name") -> type:
    """The ``monai.networks.nets`` class of an allow-listed name (``UNet`` or ``monai.networks.nets.UNet``).

    Raises
    ------
    UntrustedModelError
        If the name is not in :data:`MONAI_NETWORKS`.

    Examples
    --------
    >>> monai_network_class("monai.networks.nets.UNet").__name__
    'UNet'
    >>> monai_network_class("os.system")
    Traceback (most recent call last):
    ...
    audit.errors.UntrustedModelError: model.network.name: allowed MONAI networks are ['AttentionUnet', 'BasicUNet', 'BasicUNetPlusPlus', 'DynUNet', 'HighResNet', 'SegResNet', 'SegResNetDS', 'SegResNetVAE', 'SwinUNETR', 'UNETR', 'UNet', 'VNet']; found 'os.system'
    """
    short = name.removeprefix(_MONAI_PREFIX) if isinstance(name, str) else name
    if short not in MONAI_NETWORKS:
        raise UntrustedModelError(f"{field}: allowed MONAI networks are {sorted(MONAI_NETWORKS)}; found {name!r}")
    import monai.networks.nets as nets

    return getattr(nets, short)


def read_bundle_config(path: Path) -> dict[str, Any]:
    """Read a bundle config (``.json``, ``.yaml``, ``.yml``) as plain data; nothing in it is evaluated."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"model.path: bundle config {path} is not valid {Path(path).suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"model.path: bundle config {path} must hold a mapping at the top level; found {type(data).__name__}")
    return dict(data)


def _lookup(config: Mapping[str, Any], ref: str, where: str) -> Any:
    node: Any = config
    for part in re.split(r"::|#", ref):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise UntrustedModelError(f"{where}: reference '@{ref}' does not name a value in the config")
    return node


def _literal(value: Any, config: Mapping[str, Any], where: str, depth: int) -> Any:
    """``value`` with ``@`` references to literals resolved; anything that would run code is refused."""
    if depth > _MAX_REFERENCE_DEPTH:
        raise UntrustedModelError(f"{where}: references nest deeper than {_MAX_REFERENCE_DEPTH} (a reference cycle?)")
    if isinstance(value, str):
        if value.startswith("$"):
            raise UntrustedModelError(f"{where}: '$' expressions are code and are never evaluated; found {value!r}; write the value itself")
        if value.startswith("%"):
            raise UntrustedModelError(f"{where}: '%' macros (content from other files) are not followed; found {value!r}")
        if value.startswith("@"):
            return _literal(_lookup(config, value[1:], where), config, f"{where} -> {value}", depth + 1)
        return value
    if isinstance(value, Mapping):
        special = sorted(k for k in value if isinstance(k, str) and k.startswith("_") and k.endswith("_"))
        if special:
            raise UntrustedModelError(f"{where}: a nested object ({special}) would be instantiated; only literal arguments are allowed; found {dict(value)!r}")
        return {str(k): _literal(v, config, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v, config, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise UntrustedModelError(f"{where}: unsupported value type {type(value).__name__}")


def bundle_network_definition(config: Mapping[str, Any], key: str, *, source: str) -> tuple[str, dict[str, Any]]:
    """The network class name and literal constructor arguments of a bundle config's ``key`` section.

    Parameters
    ----------
    config : Mapping
        The parsed ``configs/inference.json`` (:func:`read_bundle_config`).
    key : str
        The network section (``network_def``; ``model.options.network_key``).
    source : str
        The config file, for messages.

    Returns
    -------
    name : str
        An allow-listed MONAI network class name.
    args : dict
        Literal constructor arguments (``@`` references to literals resolved).

    Raises
    ------
    UntrustedModelError
        A ``$`` expression, a ``%`` macro, a ``_target_`` outside :data:`MONAI_NETWORKS`, a nested object,
        or other special keys (``_requires_``, ``_mode_``, ...).

    Examples
    --------
    >>> cfg = {"ch": [8, 16], "network_def": {"_target_": "UNet", "spatial_dims": 3, "channels": "@ch"}}
    >>> bundle_network_definition(cfg, "network_def", source="inference.json")
    ('UNet', {'spatial_dims': 3, 'channels': [8, 16]})
    """
    where = f"{source}: {key}"
    if key not in config:
        raise ValueError(f"model.options.network_key: {key!r} is not in {source}; keys: {sorted(config)}")
    section = config[key]
    if isinstance(section, str) and section.startswith("@"):
        section = _lookup(config, section[1:], where)
    if not isinstance(section, Mapping) or "_target_" not in section:
        raise UntrustedModelError(f"{where}: expected a mapping with '_target_' naming a MONAI network; found {section!r}")
    extra = sorted(k for k in section if k in _SPECIAL_KEYS and k != "_target_")
    if extra:
        raise UntrustedModelError(f"{where}: special keys {extra} are not supported (only '_target_' and literal arguments)")
    target = section["_target_"]
    if not isinstance(target, str):
        raise UntrustedModelError(f"{where}._target_: expected a MONAI network class name; found {target!r}")
    name = target.removeprefix(_MONAI_PREFIX)
    monai_network_class(target, field=f"{where}._target_")
    args = {str(k): _literal(v, config, f"{where}.{k}", 0) for k, v in section.items() if k != "_target_"}
    return name, args


def _resolve_inside(dotted: Any, packages: Sequence[str], where: str) -> type:
    """Import a dotted class name only when it lies inside one of ``packages``; it must be a ``torch.nn.Module`` class."""
    import torch

    if not isinstance(dotted, str) or not _DOTTED.match(dotted) or not any(dotted == p or dotted.startswith(p + ".") for p in packages):
        raise UntrustedModelError(f"{where}: allowed are classes inside {list(packages)}; found {dotted!r}")
    parts = dotted.split(".")
    obj: Any = None
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        if not any(module_name == p or module_name.startswith(p + ".") or p.startswith(module_name + ".") for p in packages):
            break
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        break
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module) and any(obj.__module__.startswith(p) for p in packages)):
        raise UntrustedModelError(f"{where}: {dotted!r} is not a torch.nn.Module class defined inside {list(packages)}")
    return obj


def check_nnunet_architecture(class_name: Any, init_kwargs: Mapping[str, Any], requires_import: Sequence[str], *, source: str) -> None:
    """Refuse an nnU-Net architecture whose class or layer names lie outside the allow-lists.

    nnunetv2 resolves ``network_class_name`` and every ``arch_kwargs`` entry named in ``_kw_requires_import``
    with ``pydoc.locate``, which imports any module on the path. This check runs first, so only names inside
    :data:`NNUNET_ARCHITECTURE_PACKAGES` (the network) and :data:`NNUNET_LAYER_PACKAGES` (layers) reach it.

    Raises
    ------
    UntrustedModelError
        Naming the plans field and the value found.
    """
    _resolve_inside(class_name, NNUNET_ARCHITECTURE_PACKAGES, f"{source}: architecture.network_class_name")
    for key in requires_import or ():
        value = (init_kwargs or {}).get(key)
        if value is not None:
            _resolve_inside(value, NNUNET_LAYER_PACKAGES, f"{source}: architecture.arch_kwargs.{key}")


def require_code_opt_in(kind: str, path: Path, options: Mapping[str, Any], sha256: str | None) -> None:
    """Refuse to load a program (TorchScript, torch.export) unless the protocol opts in and pins the file.

    Raises
    ------
    UntrustedModelError
        Without ``model.options.allow_code: true`` and ``model.sha256``.
    """
    opted_in = (options or MappingProxyType({})).get(CODE_KINDS_OPTION) is True
    if opted_in and sha256 is not None:
        logger.warning("model %s is a program (%s); loading it because the protocol opts in and pins sha256 %s", path, kind, sha256[:12])
        return
    missing = [m for m, ok in ((f"model.options.{CODE_KINDS_OPTION}: true", opted_in), ("model.sha256: <sha256 of the file>", sha256 is not None)) if not ok]
    raise UntrustedModelError(
        f"model.kind: {path.name} is a {kind} program, which runs its own code when loaded and called; spine-audit runs one only "
        f"when the protocol opts in and pins the reviewed file; missing {missing}. Alternatively ship the weights as kind "
        f"'checkpoint' (a state dict read with weights_only=True) with a MONAI network"
    )


def check_nnunet_plans(plans: Mapping[str, Any], *, source: str) -> None:
    """:func:`check_nnunet_architecture` for every configuration of a ``plans.json`` that names an architecture."""
    configurations = plans.get("configurations") if isinstance(plans, Mapping) else None
    if not isinstance(configurations, Mapping):
        return  # nothing names a class; the loader reports the malformed plans
    for name, config in configurations.items():
        arch = config.get("architecture") if isinstance(config, Mapping) else None
        if isinstance(arch, Mapping):
            kwargs = arch.get("arch_kwargs") if isinstance(arch.get("arch_kwargs"), Mapping) else {}
            requires = arch.get("_kw_requires_import") or ()
            if not isinstance(requires, (list, tuple)):
                raise UntrustedModelError(f"{source}: configurations.{name}.architecture._kw_requires_import: expected a list of arch_kwargs names; found {requires!r}")
            check_nnunet_architecture(arch.get("network_class_name"), kwargs, requires, source=f"{source} configurations.{name}")


def vet_model(spec: ModelSpec) -> None:
    """Static trust checks of a model, before anything is loaded, hashed or run (cheap: configs only).

    ``checkpoint``: the network name is allow-listed. ``torchscript``: the protocol opts in and pins the file.
    ``monai_bundle``: the config's network section is data with an allow-listed ``_target_`` (unless the
    protocol gives the network), and TorchScript weights need the opt-in. ``nnunet``: every architecture in
    ``plans.json`` lies inside the allow-listed packages. Missing files are left to the loaders.

    Raises
    ------
    UntrustedModelError
        Naming the field, what is allowed and what was found.
    """
    path = spec.path
    if spec.network is not None:
        monai_network_class(spec.network.name)
    if path is None:
        return
    if spec.kind == "torchscript":
        require_code_opt_in("torch.export" if path.suffix == ".pt2" else "TorchScript", path, spec.options, spec.sha256)
    elif spec.kind == "monai_bundle" and path.is_dir():
        if spec.network is None:
            config = next((c for c in (path / "configs" / f"inference.{e}" for e in ("json", "yaml", "yml")) if c.is_file()), None)
            if config is not None:
                key = str(spec.options.get("network_key", "network_def"))
                bundle_network_definition(read_bundle_config(config), key, source=config.name)
        if Path(str(spec.options.get("weights", "models/model.pt"))).suffix == ".ts":
            require_code_opt_in("TorchScript", path / str(spec.options.get("weights")), spec.options, spec.sha256)
    elif spec.kind == "nnunet" and (path / "plans.json").is_file():
        try:
            plans = json.loads((path / "plans.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"model.path: {path / 'plans.json'} is not valid JSON: {exc}") from None
        check_nnunet_plans(plans, source=f"{path.name}/plans.json")
