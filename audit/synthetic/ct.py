"""Synthetic CT of the thoracolumbar spine in Hounsfield units, with VerSe-numbered vertebra masks.

A spine-centred axial crop (air outside a soft-tissue body, fat layer, aorta, vertebrae T9..L6 with bodies,
arches, spinous and transverse processes, ribs on thoracic levels, a sacrum with iliac wings below the last
lumbar vertebra) rendered on a source's grid, blurred by its reconstruction kernel and given its noise level.
Anatomical variants are drawn per patient: an L6 (lumbarised S1), a T13 (13 rib-bearing vertebrae), or a
missing T12 (11 thoracic). Labels: VerSe codes (T9 = 16 .. L6 = 25, T13 = 28), sacrum unlabelled, as in
CTSpine1K. The sources mimic CTSpine1K's four sources by acquisition (vendor, kVp, slice thickness, kernel,
contrast, dose), not by body region: every synthetic scan is thoracolumbar. See ``docs/ct.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from audit.label_maps import VERSE_CODES

logger = logging.getLogger(__name__)

__all__ = ["CTSource", "CT_SOURCES", "CT_HARD_SOURCE", "CTCase", "draw_spine", "generate_ct_case", "CT_LEVELS"]

#: Vertebrae the generator can draw (superior first); T13 and L6 only as variants.
CT_LEVELS: tuple[str, ...] = ("T9", "T10", "T11", "T12", "T13", "L1", "L2", "L3", "L4", "L5", "L6")
_HEIGHT_MM = {"T9": 20, "T10": 21, "T11": 22, "T12": 23, "T13": 23, "L1": 25, "L2": 26, "L3": 27, "L4": 27, "L5": 26, "L6": 25}
HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "cortical": 900.0, "cancellous": 250.0, "disc": 80.0, "csf": 10.0, "rib": 650.0}


@dataclasses.dataclass(frozen=True)
class CTSource:
    """A CT source: acquisition traits and the metadata it writes.

    ``noise_hu``: standard deviation of the added noise (dose); ``blur_mm``: Gaussian sigma of the kernel's
    smoothing (soft kernels blur more); ``fov``: (first, last) vertebra names the scan usually covers.
    """

    name: str
    spacing: tuple[float, float, float]
    noise_hu: float
    blur_mm: float
    contrast_hu: float
    fov: tuple[str, str]
    vendors: tuple[tuple[str, str], ...]
    kvp: tuple[float, ...]
    kernel: str
    contrast_agent: str | None


CT_SOURCES: tuple[CTSource, ...] = (
    CTSource("colonog", (2.0, 2.0, 1.25), 18.0, 0.8, 0.0, ("T11", "L5"), (("GE MEDICAL SYSTEMS", "LightSpeed 16"), ("SIEMENS", "Sensation 16")), (120.0,), "STANDARD", "None"),
    CTSource("hnscc-3dct-rt", (2.0, 2.0, 2.0), 15.0, 0.9, 160.0, ("T9", "L2"), (("SIEMENS", "Sensation Open"),), (120.0,), "B31s", "OMNIPAQUE 300"),
    CTSource("msd-liver", (2.0, 2.0, 2.5), 20.0, 0.8, 180.0, ("T9", "L3"), (("Philips", "Brilliance 64"), ("GE MEDICAL SYSTEMS", "Discovery CT750 HD")), (100.0, 120.0), "B", "IOMERON 400"),
    CTSource("covid-19", (2.0, 2.0, 5.0), 400.0, 0.0, 0.0, ("T9", "L2"), (("TOSHIBA", "Aquilion ONE"), ("SIEMENS", "SOMATOM Definition AS")), (120.0,), "B70f", None),
)
#: The planted hard source: low-dose noise, a sharp lung kernel and 5 mm slices.
CT_HARD_SOURCE = "covid-19"
_HARD_DEFAULTS = {"noise_hu": 18.0, "blur_mm": 0.8}


@dataclasses.dataclass(frozen=True)
class CTCase:
    """One synthetic CT: ``image`` int16 HU, ``label`` uint8 VerSe codes, RAS ``affine``, metadata, truth."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    metadata: dict[str, Any]
    truth: dict[str, Any]


def draw_spine(rng: np.random.Generator, fov: tuple[str, str]) -> tuple[list[str], tuple[str, ...]]:
    """The vertebrae in the field of view (superior first) and the variants drawn for this patient.

    Variants: T13 with probability 0.06, missing T12 0.06 (exclusive with T13), L6 0.10.
    """
    u = rng.random()
    thoracic = ["T9", "T10", "T11", "T12", "T13"] if u < 0.06 else ["T9", "T10", "T11"] if u < 0.12 else ["T9", "T10", "T11", "T12"]
    lumbar = ["L1", "L2", "L3", "L4", "L5"] + (["L6"] if rng.random() < 0.10 else [])
    spine = thoracic + lumbar
    variants = tuple(v for v, on in (("T13", "T13" in spine), ("missing_T12", "T12" not in spine), ("L6", "L6" in spine)) if on)
    first, last = fov
    start = spine.index(first) if first in spine else 0
    stop = len(spine) if last == "L5" else (spine.index(last) + 1 if last in spine else len(spine))
    jitter = int(rng.integers(0, 2))  # the field of view starts at the first or the next level
    return spine[min(start + jitter, stop - 3) : stop], variants


def _render(rng: np.random.Generator, levels: Sequence[str], sacrum: bool, spacing: tuple[float, float, float], contrast_hu: float) -> tuple[np.ndarray, np.ndarray]:
    sx, sy, sz = spacing
    heights = [_HEIGHT_MM[v] * float(rng.uniform(0.93, 1.07)) for v in levels]
    discs = [6.0 if v.startswith("T") else 9.0 for v in levels]
    top_margin = float(rng.uniform(4.0, 10.0))
    length = top_margin + sum(heights) + sum(discs) + (45.0 if sacrum else 8.0)
    nx, ny, nz = 48, 48, int(math.ceil(length / sz))
    x = (np.arange(nx) - (nx - 1) / 2) * sx  # mm, left-right, 0 = midline
    y = (np.arange(ny) - (ny - 1) / 2) * sy + 10.0  # mm, anterior (-) to posterior (+)
    z = length - np.arange(nz) * sz  # mm from the bottom; index 0 = superior (flipped into RAS below)
    X, Y = np.meshgrid(x, y, indexing="ij")
    image = np.full((nx, ny, nz), HU["air"], dtype=np.float32)
    label = np.zeros((nx, ny, nz), dtype=np.uint8)
    body_r = float(rng.uniform(60.0, 75.0))
    tissue = (X / body_r) ** 2 + ((Y - 20.0) / (0.8 * body_r)) ** 2 <= 1.0
    fat = tissue & ((X / (body_r - 6)) ** 2 + ((Y - 20.0) / (0.8 * body_r - 6)) ** 2 > 1.0)
    aorta = (X + 12.0) ** 2 + (Y + 28.0) ** 2 <= 10.0**2
    curve = float(rng.uniform(-4.0, 4.0))
    image[tissue] = HU["soft"]
    image[fat] = HU["fat"]
    image[aorta] = HU["soft"] + contrast_hu
    # vertebrae, top to bottom
    z_top = length - top_margin
    spans = []
    for name, h, d in zip(levels, heights, discs):
        spans.append((name, z_top - h, z_top))
        z_top -= h + d
    for name, z0, z1 in spans:
        lumbar = name.startswith("L")
        rx, ry = (22.0, 16.0) if lumbar else (16.0, 14.0)
        cy = curve * math.sin((z0 + z1) / length * math.pi) - 8.0
        ks = (z >= z0) & (z <= z1)
        if not ks.any():
            continue
        body = ((X / rx) ** 2 + ((Y - cy) / ry) ** 2) <= 1.0
        inner = ((X / (rx - 2.5)) ** 2 + ((Y - cy) / (ry - 2.5)) ** 2) <= 1.0
        canal_y = cy + ry + 9.0
        r_canal = np.hypot(X, Y - canal_y)
        arch = (r_canal >= 8.0) & (r_canal <= 13.0) & (Y > cy + ry - 3)
        spinous = (np.abs(X) <= 3.0) & (Y >= canal_y + 12.0) & (Y <= canal_y + (32.0 if lumbar else 26.0))
        transverse = (np.abs(Y - canal_y) <= 4.0) & (np.abs(X) >= 9.0) & (np.abs(X) <= (38.0 if lumbar else 30.0))
        bone = body | arch | spinous | transverse
        zc = ks.nonzero()[0]
        mid = (z0 + z1) / 2
        post = np.abs(z[zc] - mid) <= (z1 - z0) * 0.35  # posterior elements are shorter than the body
        for k, is_post in zip(zc, post):
            mask = body | (arch | spinous | transverse) if is_post else body
            image[..., k][mask] = HU["cortical"]
            image[..., k][inner] = HU["cancellous"]
            image[..., k][(r_canal < 8.0) & (Y > cy + ry)] = HU["csf"]
            label[..., k][mask] = VERSE_CODES[name]
        if name.startswith("T"):  # ribs leave the transverse processes; the lowest thoracic level has short ones
            lowest = name == [n for n, _, _ in spans if n.startswith("T")][-1]
            reach = 40.0 if lowest else 70.0
            rib = (np.abs(Y - canal_y + 2.0) <= 4.0) & (np.abs(X) >= 30.0) & (np.abs(X) <= 30.0 + reach)
            kr = zc[np.abs(z[zc] - mid) <= 4.0]
            for k in kr:
                image[..., k][rib & ~bone] = HU["rib"]
        disc_slab = (z < z0) & (z >= z0 - (9.0 if lumbar else 6.0))
        for k in disc_slab.nonzero()[0]:
            image[..., k][body] = HU["disc"]
    if sacrum:
        z1 = spans[-1][1] - 9.0
        ks = (z <= z1) & (z >= z1 - 45.0)
        sac = ((X / 30.0) ** 2 + ((Y - 2.0) / 18.0) ** 2) <= 1.0
        ilium = (np.abs(X) >= 40.0) & (np.abs(X) <= 80.0) & (np.abs(Y - 10.0) <= 6.0)
        for k in ks.nonzero()[0]:
            image[..., k][sac | ilium] = HU["cortical"] * 0.8
    return image[:, :, ::-1].copy(), label[:, :, ::-1].copy()  # index 0 = inferior: RAS with a diagonal affine


def generate_ct_case(rng: np.random.Generator, source: CTSource, *, hard: bool = True) -> CTCase:
    """Render one synthetic CT of ``source``; ``hard=False`` renders the source with standard dose and kernel."""
    noise, blur = (source.noise_hu, source.blur_mm) if hard or source.name != CT_HARD_SOURCE else (_HARD_DEFAULTS["noise_hu"], _HARD_DEFAULTS["blur_mm"])
    levels, variants = draw_spine(rng, source.fov)
    sacrum = levels[-1] in ("L5", "L6")
    image, label = _render(rng, levels, sacrum, source.spacing, source.contrast_hu)
    if blur > 0:
        image = ndimage.gaussian_filter(image, sigma=[blur / s for s in source.spacing])
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    affine = np.diag([*source.spacing, 1.0])
    vendor, model = source.vendors[int(rng.integers(len(source.vendors)))]
    metadata = {
        "Manufacturer": vendor,
        "ManufacturersModelName": model,
        "KVP": float(source.kvp[int(rng.integers(len(source.kvp)))]),
        "SliceThickness": source.spacing[2],
        "ConvolutionKernel": source.kernel,
        **({"ContrastBolusAgent": source.contrast_agent} if source.contrast_agent is not None else {}),
    }
    truth = {"levels": list(levels), "variants": list(variants), "noise_hu": noise, "blur_mm": blur, "hard": bool(hard and source.name == CT_HARD_SOURCE)}
    return CTCase(image, label, affine, source.spacing, metadata, truth)
