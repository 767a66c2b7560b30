"""Preprocessing shared by training and inference, device choice, and the sliding-window forward pass.

:func:`prepare_image` is *the* preprocessing code path: the demo model's training script and the
inference runner both call it with the model card's :class:`~audit.inference.spec.PreprocessingSpec`,
so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from audit.harmonize.geometry import Volume, reorient, resample_to_grid, resample_to_spacing
from audit.harmonize.intensity import normalize_intensity
from audit.inference.spec import DEVICES, InferenceSettings, PreprocessingSpec

logger = logging.getLogger(__name__)

__all__ = [
    "prepare_image",
    "prepare_label",
    "select_device",
    "autocast_context",
    "predict_probabilities",
    "probabilities_to_labels",
    "RetryInfo",
    "predict_labels_with_retry",
]


def prepare_image(volume: Volume, prep: PreprocessingSpec) -> Volume:
    """Reorient (exact), resample to the model spacing (linear), then normalise intensities.

    Returns the model-grid image as float32 with the model-grid affine (needed to go back to native space).
    """
    v = reorient(volume, prep.orientation)
    if prep.spacing is not None:
        v = resample_to_spacing(v, prep.spacing, order=1)
    return Volume(normalize_intensity(v.array, prep.intensity), v.affine)


def prepare_label(label: Volume, grid: Volume) -> np.ndarray:
    """Put a reference label onto a prepared image's grid (nearest neighbour) for training."""
    return resample_to_grid(label.array, label.affine, grid.shape, grid.affine, order=0)


def select_device(requested: str = "auto") -> torch.device:
    """Pick ``cuda`` if available, then ``mps``, else ``cpu``; or check an explicit request.

    Raises
    ------
    ValueError
        If ``requested`` is not one of :data:`~audit.inference.spec.DEVICES` (``cuda:N`` allowed) or
        names an unavailable device.
    """
    kind = requested.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"device: allowed values {list(DEVICES)} (or 'cuda:N'); found {requested!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {requested!r} requested but CUDA is not available (torch {torch.__version__}); use 'auto' or 'cpu'")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {requested!r} requested but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(requested)


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on CUDA when ``amp``; a no-op elsewhere (CPU/MPS run in float32)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _pad_to_multiple(x: torch.Tensor, multiple: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    spatial = x.shape[2:]
    extra = [(-s) % m for s, m in zip(spatial, multiple)]
    if not any(extra):
        return x, tuple(spatial)  # type: ignore[return-value]
    pad: list[int] = []
    for e in reversed(extra):
        pad += [0, e]
    return F.pad(x, pad, mode="replicate"), tuple(spatial)  # type: ignore[return-value]


def _forward_once(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, settings: InferenceSettings, sw_batch_size: int) -> torch.Tensor:
    if settings.roi_size is None:
        xp, spatial = _pad_to_multiple(x, settings.divisible_by)
        out = network(xp)
        return out[(..., *(slice(0, s) for s in spatial))]
    return sliding_window_inference(
        x, roi_size=settings.roi_size, sw_batch_size=sw_batch_size, predictor=network, overlap=settings.overlap, mode=settings.mode
    )


def _to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def predict_probabilities(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    settings: InferenceSettings,
    *,
    device: torch.device,
    sw_batch_size: int | None = None,
) -> torch.Tensor:
    """Class probabilities ``(C, X, Y, Z)`` (float32, on ``device``) of a prepared image.

    Runs whole-volume or MONAI ``sliding_window_inference`` (``settings.roi_size``), under autocast on CUDA
    when ``settings.amp``, averaging softmax outputs over ``settings.tta_flips``. A single output channel is
    read as a sigmoid foreground probability (label 1).
    """
    bs = settings.sw_batch_size if sw_batch_size is None else sw_batch_size
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.inference_mode(), autocast_context(device, settings.amp):
        probs = _to_probabilities(_forward_once(network, x, settings, bs))
        for axes in settings.tta_flips:
            dims = [a + 2 for a in axes]
            out = _forward_once(network, torch.flip(x, dims=dims), settings, bs)
            probs += torch.flip(_to_probabilities(out), dims=dims)
    return probs[0] / (1 + len(settings.tta_flips))


def probabilities_to_labels(probs: torch.Tensor) -> np.ndarray:
    """Arg-max over channels; channel ``c`` is label value ``c`` (uint8, or uint16 beyond 255 classes).

    Ties go to the first channel and a NaN counts as the maximum, as in ``torch.argmax``. On the CPU the
    arg-max runs in NumPy (same rules, identical labels): torch's CPU arg-max over the outer channel axis took
    35 ms per demo case against 5 ms (5 x 16 x 96 x 144 floats, one thread; docs/performance.md).

    Examples
    --------
    >>> probabilities_to_labels(torch.tensor([[[[0.2, 0.5]]], [[[0.8, 0.5]]]])).ravel().tolist()
    [1, 0]
    """
    if probs.device.type == "cpu":
        labels = np.argmax(probs.numpy(), axis=0)
    else:
        labels = torch.argmax(probs, dim=0).cpu().numpy()
    return labels.astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


@dataclasses.dataclass(frozen=True)
class RetryInfo:
    """What the out-of-memory fallback did for one case."""

    oom_retries: int
    device: str
    sw_batch_size: int


def predict_labels_with_retry(
    network: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    settings: InferenceSettings,
    *,
    device: torch.device,
    cpu_networks: dict[str, Any] | None = None,
) -> tuple[np.ndarray, RetryInfo]:
    """Predict labels, retrying on out-of-memory: halve the window batch down to 1, then fall back to CPU.

    Parameters
    ----------
    network : callable
        Maps ``(N, 1, X, Y, Z)`` to logits ``(N, C, X, Y, Z)``.
    image : numpy.ndarray
        Prepared image (model grid).
    settings : InferenceSettings
        Window, AMP and TTA settings.
    device : torch.device
        Device the network lives on.
    cpu_networks : dict, optional
        Cache for the CPU copy of ``network`` made on fallback (so it is copied once per run).

    Raises
    ------
    torch.OutOfMemoryError
        If even batch 1 on CPU runs out of memory.
    """
    bs, dev, net, retries = settings.sw_batch_size, device, network, 0
    while True:
        try:
            labels = probabilities_to_labels(predict_probabilities(net, image, settings, device=dev, sw_batch_size=bs))
            return labels, RetryInfo(retries, str(dev), bs)
        except torch.OutOfMemoryError:
            retries += 1
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if bs > 1 and settings.roi_size is not None:
                bs = max(1, bs // 2)
                logger.warning("out of memory on %s; retrying with sw_batch_size=%d", dev, bs)
            elif dev.type != "cpu":
                dev = torch.device("cpu")
                net = _cpu_copy(network, cpu_networks)
                logger.warning("out of memory on %s with sw_batch_size=%d; retrying on CPU", device, bs)
            else:
                raise


def _cpu_copy(network: Any, cache: dict[str, Any] | None) -> Any:
    if cache is not None and "cpu" in cache:
        return cache["cpu"]
    net = copy.deepcopy(network).to("cpu") if isinstance(network, torch.nn.Module) else network
    if cache is not None:
        cache["cpu"] = net
    return net
