"""Intensity normalisation: foreground z-score, percentile clipping, Nyúl histogram standardisation.

MRI intensities have no physical unit, so a model is trained on normalised images and every site's images
must go through the same normalisation before inference. The math lives in small pure functions; a model
declares which one it uses through :class:`IntensitySpec` (the ``preprocessing.intensity`` entry of its
model card), and :func:`normalize_intensity` applies it, in training and in inference alike.

Nyúl standardisation (Nyúl, Udupa & Zhang, IEEE TMI 2000): on a reference site, each image's
foreground percentiles (landmarks) are mapped linearly so that its ``[p_low, p_high]`` range spans a
standard scale, and the mapped landmarks are averaged. Any new image is then mapped piecewise-linearly
from its own landmarks onto the standard ones, which aligns its histogram shape with the reference site.

CT is different: its voxels are Hounsfield units (HU, water 0, air -1000), stored as ``stored * RescaleSlope +
RescaleIntercept`` (:func:`to_hounsfield`; NIfTI ``scl_slope``/``scl_inter`` are applied by nibabel on read).
A CT model clips to a fixed HU range and either scales it to [0, 1] (``ct_window``, a display window given as
``hu_min``/``hu_max`` or ``window: {level, width}``) or z-scores it with fixed training statistics
(``ct_clip_zscore``, nnU-Net's CT normalisation with the ``mean``/``std`` of its training foreground). Both are
fixed maps: the same HU value gives the same network input at every site. :func:`hounsfield_warnings` flags an
image that does not look like HU (air not near -1000: a missing intercept, or a non-CT image).
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
    "to_hounsfield",
    "hu_window",
    "hounsfield_warnings",
    "HOUNSFIELD_METHODS",
]

#: ``none``: cast only; ``zscore``: whole-image z-score; ``foreground_zscore``: z-score with the mean and
#: standard deviation of foreground voxels (above the image mean); ``percentile_zscore``: clip to the
#: ``[lower, upper]`` percentiles of the whole image, then foreground z-score; ``nyul``: Nyúl standardisation
#: onto landmarks fitted on a reference site, then divide by the scale width; ``ct_window``: clip to
#: ``[hu_min, hu_max]`` HU and scale to [0, 1]; ``ct_clip_zscore``: clip to ``[hu_min, hu_max]`` HU, then
#: ``(x - mean) / std`` with fixed training statistics.
INTENSITY_METHODS: tuple[str, ...] = ("none", "zscore", "foreground_zscore", "percentile_zscore", "nyul", "ct_window", "ct_clip_zscore")
#: The methods that expect Hounsfield units (fixed HU maps): their input images are checked by :func:`hounsfield_warnings`.
HOUNSFIELD_METHODS: tuple[str, ...] = ("ct_window", "ct_clip_zscore")

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
    hu_min, hu_max : float
        HU clipping range of ``ct_window`` and ``ct_clip_zscore``.
    mean, std : float or None
        Fixed training statistics of ``ct_clip_zscore`` (required for it; ``std > 0``).
    """

    method: str = "foreground_zscore"
    lower: float = 0.5
    upper: float = 99.5
    nyul: NyulStandard | None = None
    hu_min: float = -1000.0
    hu_max: float = 2000.0
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.method not in INTENSITY_METHODS:
            raise ValueError(f"preprocessing.intensity.method: allowed values {list(INTENSITY_METHODS)}; found {self.method!r}")
        if self.method == "nyul" and self.nyul is None:
            raise ValueError("preprocessing.intensity.nyul: method 'nyul' needs fitted landmarks (percentiles + landmarks, or a JSON file)")
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(f"preprocessing.intensity: need 0 <= lower < upper <= 100; found lower={self.lower}, upper={self.upper}")
        if not self.hu_min < self.hu_max:
            raise ValueError(f"preprocessing.intensity: need hu_min < hu_max (HU); found hu_min={self.hu_min}, hu_max={self.hu_max}")
        if self.method == "ct_clip_zscore" and (self.mean is None or self.std is None or not self.std > 0):
            raise ValueError(
                f"preprocessing.intensity: method 'ct_clip_zscore' needs the training mean and std > 0 (HU); found mean={self.mean}, std={self.std}"
            )

    @property
    def expects_hounsfield(self) -> bool:
        """True for the methods of :data:`HOUNSFIELD_METHODS` (a fixed HU map)."""
        return self.method in HOUNSFIELD_METHODS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also the cache key part for intensity)."""
        d: dict[str, Any] = {"method": self.method}
        if self.method == "percentile_zscore":
            d.update(lower=self.lower, upper=self.upper)
        if self.nyul is not None:
            d["nyul"] = self.nyul.to_dict()
        if self.expects_hounsfield:
            d.update(hu_min=self.hu_min, hu_max=self.hu_max)
        if self.method == "ct_clip_zscore":
            d.update(mean=self.mean, std=self.std)
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
    allowed = {"method", "lower", "upper", "nyul", "foreground", "hu_min", "hu_max", "window", "mean", "std"}
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
    hu_min, hu_max = float(value.get("hu_min", -1000.0)), float(value.get("hu_max", 2000.0))
    window = value.get("window")
    if window is not None:
        if not isinstance(window, Mapping) or set(window) != {"level", "width"} or "hu_min" in value or "hu_max" in value:
            raise ValueError(f"preprocessing.intensity.window: expected {{level, width}} in HU (and no hu_min/hu_max); found {window!r}")
        hu_min, hu_max = float(window["level"]) - float(window["width"]) / 2, float(window["level"]) + float(window["width"]) / 2
    return IntensitySpec(
        method=method,
        lower=float(value.get("lower", 0.5)),
        upper=float(value.get("upper", 99.5)),
        nyul=NyulStandard.from_dict(nyul) if nyul is not None else None,
        hu_min=hu_min,
        hu_max=hu_max,
        mean=None if value.get("mean") is None else float(value["mean"]),
        std=None if value.get("std") is None else float(value["std"]),
    )


def to_hounsfield(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Stored CT values to Hounsfield units: ``stored * slope + intercept`` (DICOM RescaleSlope/Intercept).

    Returns float32. ``slope`` must be a finite non-zero number.

    Examples
    --------
    >>> to_hounsfield(np.array([0, 1024, 2024], dtype=np.uint16), 1.0, -1024.0).tolist()
    [-1024.0, 0.0, 1000.0]
    """
    slope, intercept = float(slope), float(intercept)
    if not (np.isfinite(slope) and slope != 0 and np.isfinite(intercept)):
        raise ValueError(f"to_hounsfield: RescaleSlope must be finite and non-zero and RescaleIntercept finite; found slope={slope}, intercept={intercept}")
    return (np.asarray(stored, dtype=np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32, copy=False)


def hu_window(array: np.ndarray, *, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip to ``[hu_min, hu_max]`` and scale linearly to [0, 1] (float32).

    Examples
    --------
    >>> hu_window(np.array([-2000.0, -1000.0, 500.0, 3000.0]), hu_min=-1000, hu_max=2000).tolist()
    [0.0, 0.0, 0.5, 1.0]
    """
    if not hu_min < hu_max:
        raise ValueError(f"hu_window: need hu_min < hu_max; found hu_min={hu_min}, hu_max={hu_max}")
    arr = np.clip(np.asarray(array, dtype=np.float32), hu_min, hu_max)
    return ((arr - np.float32(hu_min)) / np.float32(hu_max - hu_min)).astype(np.float32, copy=False)


#: Air is -1000 HU; a CT image's lowest values (air around the patient or in the lungs, or the -1024/-2048
#: padding outside the reconstruction circle) lie at or below this bound.
HU_AIR_UPPER_BOUND = -900.0


def hounsfield_warnings(array: np.ndarray) -> list[str]:
    """Reasons why ``array`` does not look like a CT image in HU (empty list when it does).

    Checks the minimum (some air or padding, <= -900 HU, is in almost every CT, even a tight crop around the
    spine such as ../shared/data/tptbox-lumbar-ct, minimum -1030; an image of bone only fails this check, so it is a
    warning, not an error) and the range (-2048/-3024 padding outside the field of view is allowed; above 30000
    suggests stored values without the slope).
    """
    arr = np.asarray(array)
    low, high = float(arr.min()), float(arr.max())
    out = []
    if low > HU_AIR_UPPER_BOUND:
        hint = " (all values >= 0: RescaleIntercept, usually -1024, not applied?)" if low >= 0 else ""
        out.append(f"image does not look like Hounsfield units: minimum {low:.0f} > {HU_AIR_UPPER_BOUND:.0f} HU (no air){hint}")
    if low < -3100:
        out.append(f"image has values below -3100 HU (minimum {low:.0f}): not a CT image in HU?")
    if high > 30000:
        out.append(f"image has values above 30000 (maximum {high:.0f}): stored values without RescaleSlope?")
    return out


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
    if spec.method == "ct_window":
        return hu_window(array, hu_min=spec.hu_min, hu_max=spec.hu_max)
    if spec.method == "ct_clip_zscore":
        assert spec.mean is not None and spec.std is not None
        clipped = np.clip(np.asarray(array, dtype=np.float32), spec.hu_min, spec.hu_max)
        return ((clipped - np.float32(spec.mean)) / np.float32(spec.std)).astype(np.float32, copy=False)
    assert spec.nyul is not None
    lo, hi = spec.nyul.landmarks[0], spec.nyul.landmarks[-1]
    return ((apply_nyul(array, spec.nyul) - lo) / (hi - lo)).astype(np.float32)
