"""nnU-Net v2 trained-model folders, run through nnunetv2's own predictor (optional extra).

nnU-Net does its own preprocessing (its plans fix axis handling, spacing and normalisation), so this
loader bypasses spine-audit's preprocessing: it hands the native image to
``nnUNetPredictor.predict_single_npy_array`` in the axis convention of the reader named in ``plans.json``
(``SimpleITKIO`` / ``NibabelIO``: array axes and spacing reversed; ``NibabelIOWithReorient``: the image is
first reoriented to RAS, as nnU-Net's reader does) and returns a label volume with its affine, which the
runner then maps onto the reference grid.

Checkpoints are read here with ``torch.load(..., weights_only=True)`` (numpy scalars and dtypes, which
nnU-Net's training log stores, are the only globals allowed beyond torch's own) and handed to the predictor
through ``manual_initialization``: nnunetv2's ``initialize_from_trained_model_folder`` would unpickle them
with ``weights_only=False``. The architecture named in ``plans.json`` (and the layer classes its
``arch_kwargs`` name) must lie inside the allow-listed packages of :mod:`audit.inference.trust` before
nnunetv2 resolves them with ``pydoc.locate`` (which would import any module). The trainer class is looked up
by name among the installed nnunetv2's trainers only. Install with ``pip install 'spine-audit[nnunet]'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import logging
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.harmonize.geometry import Volume, reorient
from audit.inference.trust import check_nnunet_architecture
from audit.ontology import LabelMap

logger = logging.getLogger(__name__)

__all__ = ["NNUNET_INSTALL_HINT", "NNUNET_READERS", "nnunet_available", "validate_nnunet_folder", "load_nnunet_checkpoint", "load_nnunet"]

NNUNET_INSTALL_HINT = "pip install 'spine-audit[nnunet]'"

#: ``plans.json`` ``image_reader_writer`` values this loader reproduces, and whether the reader reorients to RAS.
NNUNET_READERS: dict[str, bool] = {"SimpleITKIO": False, "NibabelIO": False, "NibabelIOWithReorient": True}

_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")


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


def _numpy_safe_globals() -> list[Any]:
    """numpy scalar reconstruction and dtype classes: data, not code, and what nnU-Net's logger pickles."""
    core = getattr(np, "_core", None) or np.core
    dtype_classes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    return [core.multiarray.scalar, np.dtype, *dtype_classes]


def load_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """Read one nnU-Net checkpoint with ``weights_only=True``.

    Parameters
    ----------
    path : Path
        ``fold_k/checkpoint_final.pth`` (or another checkpoint name).

    Returns
    -------
    dict
        The checkpoint; it has at least ``network_weights``, ``trainer_name`` and ``init_args``.

    Raises
    ------
    ValueError
        When the file holds objects other than tensors, containers, numbers, strings and numpy scalars
        (a pickled class would run code on load), or lacks a required key.
    """
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"model.path: nnU-Net checkpoint {path} cannot be read with torch.load(weights_only=True); it holds objects other than "
            f"tensors, containers, numbers and numpy scalars, which spine-audit refuses to unpickle ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in _CHECKPOINT_KEYS):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"model.path: {path} is not an nnU-Net checkpoint; expected keys {list(_CHECKPOINT_KEYS)}; got {keys}")
    if not isinstance(checkpoint["init_args"], Mapping) or "configuration" not in checkpoint["init_args"]:
        raise ValueError(f"model.path: nnU-Net checkpoint {path}: init_args must name the 'configuration' it was trained with")
    return checkpoint


@contextlib.contextmanager
def _nnunet_prints_to_log() -> Iterator[None]:
    """nnunetv2 prints (missing nnUNet_raw variables, device notes); route them to this module's debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        if line.strip():
            logger.debug("nnunetv2: %s", line)


def _check_labels(dataset_json: Mapping[str, Any], labels: LabelMap | None, folder: Path) -> None:
    """The protocol's label map and nnU-Net's ``dataset.json`` labels must agree value for value (background aside)."""
    declared = dataset_json.get("labels")
    if not isinstance(declared, Mapping) or labels is None:
        return
    names: dict[int, str] = {}  # label value -> dataset.json name
    for name, value in declared.items():
        if isinstance(value, int):
            names[int(value)] = str(name)
        elif isinstance(value, (list, tuple)):
            raise ValueError(f"model.path: {folder}/dataset.json defines region-based label {name!r} = {value}; spine-audit audits label (not region) models")
    mapped = {int(v) for v in labels.values} | {int(v) for v in labels.ignore}
    unknown = sorted(int(v) for v in labels.values if int(v) not in names)
    if unknown:
        raise ValueError(f"model.labels: values {unknown} are not outputs of the nnU-Net model (dataset.json labels: {dict(declared)})")
    unmapped = sorted(v for v in names if v and v not in mapped)
    if unmapped:
        raise ValueError(
            f"model.labels: the nnU-Net model emits values {unmapped} ({[names[v] for v in unmapped]}) that model.labels neither maps nor "
            f"ignores; every case holding them would fail at the metrics stage. Map them, or use the form "
            f"{{values: {{...}}, ignore: {unmapped}}}"
        )


def _find_trainer(trainer_name: str) -> Any:
    """The trainer class by name, as nnunetv2 finds it (2.6+: also trainers registered by plugins)."""
    import nnunetv2
    from nnunetv2.utilities import find_class_by_name

    with _nnunet_prints_to_log():
        if hasattr(find_class_by_name, "recursive_find_trainer_class_by_name"):
            return find_class_by_name.recursive_find_trainer_class_by_name(trainer_name)
        return find_class_by_name.recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"), trainer_name, "nnunetv2.training.nnUNetTrainer")


def _build_network(trainer_name: str, plans_manager: Any, configuration_manager: Any, n_in: int, n_out: int, folder: Path) -> torch.nn.Module:
    """The network exactly as the trainer builds it for inference (deep supervision off), for either signature.

    nnunetv2 >= 2.7 passes ``(plans_manager, configuration_manager, ...)``; earlier releases pass the plans'
    architecture class name and keyword arguments.
    """
    try:
        trainer_class = _find_trainer(trainer_name)
    except Exception as exc:  # nnunetv2 raises RuntimeError or returns None, by version
        raise ValueError(f"model.path: nnU-Net trainer {trainer_name!r} (from {folder}) cannot be found in the installed nnunetv2: {exc}") from exc
    if trainer_class is None:
        raise ValueError(f"model.path: nnU-Net trainer {trainer_name!r} (from {folder}) is not a class in nnunetv2.training.nnUNetTrainer of the installed nnunetv2")
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        return trainer_class.build_network_architecture(plans_manager, configuration_manager, n_in, n_out, enable_deep_supervision=False)
    return trainer_class.build_network_architecture(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        n_in,
        n_out,
        enable_deep_supervision=False,
    )


def load_nnunet(folder: Path, options: Mapping[str, Any], device: torch.device, labels: LabelMap | None = None) -> Callable[[Volume], Volume]:
    """Build a ``Volume -> label Volume`` predictor from an nnU-Net v2 trained-model folder.

    Parameters
    ----------
    folder : Path
        Trained-model folder (``dataset.json``, ``plans.json``, ``fold_k/<checkpoint>``).
    options : Mapping
        ``folds`` (default: all found), ``checkpoint`` (``checkpoint_final.pth``), ``tile_step_size`` (0.5),
        ``use_mirroring`` (true), ``use_gaussian`` (true).
    device : torch.device
        Where the network runs.
    labels : LabelMap or None
        The protocol's ``model.labels``; its values must be labels in ``dataset.json``.

    Returns
    -------
    callable
        Maps a native image volume to a label volume (with its affine) holding nnU-Net's label values.

    Raises
    ------
    FileNotFoundError
        A missing ``dataset.json``, ``plans.json`` or fold checkpoint.
    ImportError
        When nnunetv2 is not installed (message names the install command).
    ValueError
        An unreadable checkpoint, a multi-channel model, an unsupported image reader, or labels the model
        cannot emit.
    """
    folder = Path(folder)
    checkpoint_name = str(options.get("checkpoint", "checkpoint_final.pth"))
    folds = validate_nnunet_folder(folder, folds=tuple(options.get("folds") or ()) or None, checkpoint=checkpoint_name)
    if not nnunet_available():
        raise ImportError(f"model.kind 'nnunet' needs the nnunetv2 package, which is not installed; run: {NNUNET_INSTALL_HINT}")
    with _nnunet_prints_to_log():
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in NNUNET_READERS:
        raise ValueError(f"model.path: {folder}/plans.json image_reader_writer must be one of {sorted(NNUNET_READERS)} for 3-D MRI; got {reader!r}")
    _check_labels(dataset_json, labels, folder)

    checkpoints = [load_nnunet_checkpoint(folder / f"fold_{f}" / checkpoint_name) for f in folds]
    first = checkpoints[0]
    configuration = str(first["init_args"]["configuration"])
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    check_nnunet_architecture(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        source=f"{folder.name}/plans.json configurations.{configuration}",
    )
    n_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    if n_channels != 1:
        raise ValueError(f"model.path: the nnU-Net model in {folder} takes {n_channels} input channels ({dataset_json.get('channel_names')}); spine-audit feeds one image per case")
    trainer_name = str(first["trainer_name"])
    label_manager = plans_manager.get_label_manager(dataset_json)
    network = _build_network(trainer_name, plans_manager, configuration_manager, n_channels, label_manager.num_segmentation_heads, folder)
    parameters = [c["network_weights"] for c in checkpoints]
    network.load_state_dict(parameters[0])  # a weights/plans mismatch fails here, naming the tensors
    mirror_axes = first.get("inference_allowed_mirroring_axes")

    with _nnunet_prints_to_log():
        predictor = nnUNetPredictor(
            tile_step_size=float(options.get("tile_step_size", 0.5)),
            use_gaussian=bool(options.get("use_gaussian", True)),
            use_mirroring=bool(options.get("use_mirroring", True)),
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name, tuple(mirror_axes) if mirror_axes is not None else None)
    logger.info("loaded nnU-Net model %s (%s, %s, folds %s, reader %s) on %s", folder.name, trainer_name, configuration, list(folds), reader, device)
    reorients = NNUNET_READERS[reader]

    def predict(volume: Volume) -> Volume:
        source = reorient(volume, "RAS") if reorients else volume
        # nnU-Net's axis order: the nibabel array reversed (z, y, x), as SimpleITK and nnU-Net's Nibabel readers give it
        data = np.ascontiguousarray(np.asarray(source.array, dtype=np.float32).transpose(2, 1, 0))[None]
        props = {"spacing": [float(s) for s in source.spacing[::-1]]}
        seg = predictor.predict_single_npy_array(data, props, None, None, False)  # prints nothing with verbose=False
        seg = np.asarray(seg).transpose(2, 1, 0)
        return Volume(seg.astype(np.uint8 if seg.max(initial=0) <= 255 else np.uint16), source.affine)

    return predict
