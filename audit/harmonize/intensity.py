"""Intensity normalisation: foreground z-score, percentile clipping, Nyúl histogram standardisation.

MRI intensities have no physical unit, so a model is trained on normalised images and every site's images
must go through the same normalisation before inference. The math lives in small pure functions; a model
declares which one it uses through :class:`IntensitySpec` (the ``preprocessing.intensity`` entry of its
model card), and :func:`normalize_intensity` applies it, in training and in inference alike.

Nyúl standardisation (Nyúl, Udupa & Zhang, IEEE TMI 2000): on a reference site, each image's
foreground percentiles (landmarks) are mapped linearly so that its ``[p_low, p_high]`` range spans a
standard scale, and the mapped landmarks are averaged. Any new image is then mapped piecewise-linearly
from its own landmarks onto the standard ones, which aligns its histogram shape with the reference site.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "INTENSITY_METHODS",
    "IntensitySpec",
    "NyulStandard",
    "foreground_mask",
    "zscore",
    "percentile_clip",
    "fit_nyul",
    "apply_nyul",
    "normalize_intensity",
    "intensity_spec_from",
]

#: ``none``: cast only; ``zscore``: whole-image z-score; ``foreground_zscore``: z-score with the mean and
#: standard deviation of foreground voxels (above the image mean); ``percentile_zscore``: clip to the
#: ``[lower, upper]`` percentiles of the whole image, then foreground z-score; ``nyul``: Nyúl standardisation
#: onto landmarks fitted on a reference site, then divide by the scale width.
INTENSITY_METHODS: tuple[str, ...] = ("none", "zscore", "foreground_zscore", "percentile_zscore", "nyul")

DEFAULT_NYUL_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Foreground voxels: strictly above the image mean (TorchIO's ``"mean"`` masking; FSL's default).

    Falls back to all voxels when the image is constant.
    """
    arr = np.asarray(array, dtype=np.float64)
    mask = arr > arr.mean()
    return mask if mask.any() else np.ones(arr.shape, dtype=bool)


def zscore(array: np.ndarray, *, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation of the voxels in ``mask`` (all when None).

    Returns float32. A constant region gives a zero image instead of dividing by zero.
    """
    arr = np.asarray(array, dtype=np.float32)
    values = arr if mask is None else arr[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        raise ValueError("zscore: mask selects no voxels")
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    return ((arr - mean) / max(std, eps)).astype(np.float32, copy=False)


def percentile_clip(array: np.ndarray, *, lower: float = 0.5, upper: float = 99.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Clip to the ``lower`` and ``upper`` percentiles of the voxels in ``mask`` (all when None)."""
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentile_clip: need 0 <= lower < upper <= 100; got lower={lower}, upper={upper}")
    arr = np.asarray(array, dtype=np.float32)
    values = arr if mask is None else arr[np.asarray(mask, dtype=bool)]
    lo, hi = np.percentile(values, [lower, upper])
    return np.clip(arr, lo, hi)


@dataclasses.dataclass(frozen=True)
class NyulStandard:
    """Standard histogram landmarks fitted by :func:`fit_nyul`.

    Parameters
    ----------
    percentiles : tuple of float
        Foreground percentiles used as landmarks (first and last are the low/high ends).
    landmarks : tuple of float
        Standard-scale intensity of each percentile (increasing).
    """

    percentiles: tuple[float, ...]
    landmarks: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.percentiles) != len(self.landmarks) or len(self.percentiles) < 2:
            raise ValueError(f"NyulStandard: need >= 2 percentiles and as many landmarks; got {self.percentiles}, {self.landmarks}")
        if np.any(np.diff(self.percentiles) <= 0) or np.any(np.diff(self.landmarks) <= 0):
            raise ValueError("NyulStandard: percentiles and landmarks must be strictly increasing")

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready form."""
        return {"percentiles": list(self.percentiles), "landmarks": list(self.landmarks)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NyulStandard:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(float(p) for p in d["percentiles"]), tuple(float(v) for v in d["landmarks"]))


def _landmarks(array: np.ndarray, percentiles: Iterable[float], mask: np.ndarray | None) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float64)
    values = arr[foreground_mask(arr) if mask is None else np.asarray(mask, dtype=bool)]
    return np.percentile(values, list(percentiles))


def fit_nyul(
    arrays: Iterable[np.ndarray],
    *,
    percentiles: Iterable[float] = DEFAULT_NYUL_PERCENTILES,
    scale: tuple[float, float] = (0.0, 100.0),
    masks: Iterable[np.ndarray | None] | None = None,
) -> NyulStandard:
    """Fit standard landmarks on reference-site images.

    Parameters
    ----------
    arrays : iterable of numpy.ndarray
        Reference images (one site, one protocol).
    percentiles : iterable of float
        Landmark percentiles of the foreground; the first and last define the linear map to ``scale``.
    scale : (float, float)
        Standard scale the low and high landmarks map to.
    masks : iterable of arrays or None, optional
        Foreground masks; default :func:`foreground_mask` of each image.
    """
    pcs = tuple(float(p) for p in percentiles)
    s1, s2 = float(scale[0]), float(scale[1])
    if not s1 < s2:
        raise ValueError(f"fit_nyul: scale must be increasing (low, high); got {scale}")
    mask_list = list(masks) if masks is not None else None
    mapped = []
    for i, arr in enumerate(arrays):
        lm = _landmarks(arr, pcs, None if mask_list is None else mask_list[i])
        if lm[-1] <= lm[0]:
            raise ValueError(f"fit_nyul: image {i} has a constant foreground; cannot fit landmarks")
        mapped.append(s1 + (lm - lm[0]) / (lm[-1] - lm[0]) * (s2 - s1))
    if not mapped:
        raise ValueError("fit_nyul: arrays is empty; need at least one reference image")
    return NyulStandard(pcs, tuple(float(v) for v in np.mean(mapped, axis=0)))


def apply_nyul(array: np.ndarray, standard: NyulStandard, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Map ``array`` piecewise-linearly from its own landmarks onto ``standard`` (linear extrapolation at both ends)."""
    arr = np.asarray(array, dtype=np.float64)
    lm = _landmarks(arr, standard.percentiles, mask)
    std = np.asarray(standard.landmarks)
    keep = np.concatenate([[True], np.diff(lm) > 0])  # repeated landmarks (flat histograms) are merged
    lm, std = lm[keep], std[keep]
    if lm.size < 2:
        raise ValueError("apply_nyul: the image foreground is constant; cannot map landmarks")
    out = np.interp(arr, lm, std)
    lo_slope = (std[1] - std[0]) / (lm[1] - lm[0])
    hi_slope = (std[-1] - std[-2]) / (lm[-1] - lm[-2])
    out = np.where(arr < lm[0], std[0] + (arr - lm[0]) * lo_slope, out)
    out = np.where(arr > lm[-1], std[-1] + (arr - lm[-1]) * hi_slope, out)
    return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class IntensitySpec:
    """How a model normalises intensities (see :data:`INTENSITY_METHODS`).

    Parameters
    ----------
    method : str
        One of :data:`INTENSITY_METHODS`.
    lower, upper : float
        Percentiles for ``percentile_zscore``.
    nyul : NyulStandard or None
        Landmarks for ``nyul`` (required for that method).
    """

    method: str = "foreground_zscore"
    lower: float = 0.5
    upper: float = 99.5
    nyul: NyulStandard | None = None

    def __post_init__(self) -> None:
        if self.method not in INTENSITY_METHODS:
            raise ValueError(f"preprocessing.intensity.method: allowed values {list(INTENSITY_METHODS)}; found {self.method!r}")
        if self.method == "nyul" and self.nyul is None:
            raise ValueError("preprocessing.intensity.nyul: method 'nyul' needs fitted landmarks (percentiles + landmarks, or a JSON file)")
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(f"preprocessing.intensity: need 0 <= lower < upper <= 100; found lower={self.lower}, upper={self.upper}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also the cache key part for intensity)."""
        d: dict[str, Any] = {"method": self.method}
        if self.method == "percentile_zscore":
            d.update(lower=self.lower, upper=self.upper)
        if self.nyul is not None:
            d["nyul"] = self.nyul.to_dict()
        return d


def intensity_spec_from(value: str | Mapping[str, Any] | None, *, base_dir: Path | None = None) -> IntensitySpec:
    """Parse ``preprocessing.intensity``: a method name, or a mapping with ``method`` and its options.

    ``nyul`` may be inline ``{percentiles: [...], landmarks: [...]}`` or a JSON file path (relative to ``base_dir``).
    ``"zscore"`` in a mapping with ``foreground: true`` means ``foreground_zscore``.
    """
    if value is None:
        return IntensitySpec()
    if isinstance(value, str):
        return IntensitySpec(method=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"preprocessing.intensity: expected a method name or a mapping; found {value!r}")
    allowed = {"method", "lower", "upper", "nyul", "foreground"}
    extra = sorted(set(value) - allowed)
    if extra:
        raise ValueError(f"preprocessing.intensity: unknown keys {extra}; allowed {sorted(allowed)}")
    method = str(value.get("method", "foreground_zscore"))
    if method == "zscore" and value.get("foreground"):
        method = "foreground_zscore"
    nyul = value.get("nyul")
    if isinstance(nyul, (str, Path)):
        p = Path(nyul) if base_dir is None or Path(nyul).is_absolute() else Path(base_dir) / nyul
        nyul = json.loads(p.read_text())
    return IntensitySpec(
        method=method,
        lower=float(value.get("lower", 0.5)),
        upper=float(value.get("upper", 99.5)),
        nyul=NyulStandard.from_dict(nyul) if nyul is not None else None,
    )


def normalize_intensity(array: np.ndarray, spec: IntensitySpec) -> np.ndarray:
    """Apply the normalisation a model declares; returns float32."""
    if spec.method == "none":
        return np.asarray(array, dtype=np.float32)
    if spec.method == "zscore":
        return zscore(array)
    if spec.method == "foreground_zscore":
        return zscore(array, mask=foreground_mask(array))
    if spec.method == "percentile_zscore":
        # clip first (percentiles of the whole image) so a hot artefact cannot move the foreground threshold
        clipped = percentile_clip(array, lower=spec.lower, upper=spec.upper)
        return zscore(clipped, mask=foreground_mask(clipped))
    assert spec.nyul is not None
    lo, hi = spec.nyul.landmarks[0], spec.nyul.landmarks[-1]
    return ((apply_nyul(array, spec.nyul) - lo) / (hi - lo)).astype(np.float32)
