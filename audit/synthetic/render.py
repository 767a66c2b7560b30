"""Render the phantom on a site's voxel grid: partial volume, bias field, Rician noise, orientation.

Rendering works in R-A-S array order (axis 0 = left-right slices, 1 = A-P, 2 = S-I). Every structure is
a 2-D shape in the sagittal plane (a field ``F(y, z)`` that is <= 1 inside) extruded left-right with a
cross-section profile ``F(y, z) <= 1 - |x / W|**q``; the image is evaluated at ``SUBSAMPLES`` points
across each slice thickness and averaged (partial volume), labels and tissue classes are taken at the
slice centre (nearest). All of it is vectorised numpy.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy.ndimage import gaussian_filter

from audit.ontology import LEVEL_VALUES
from audit.synthetic.anatomy import DISC_LEVELS, LEVELS, Anatomy, Curve, centerline
from audit.synthetic.profiles import TISSUES, SiteProfile

logger = logging.getLogger(__name__)

__all__ = ["SUBSAMPLES", "BASE_INTENSITY", "Pose", "Phantom", "draw_pose", "render_phantom", "acquire", "reorient"]

SUBSAMPLES = 5
TISSUE_CODE = {t: i for i, t in enumerate(TISSUES)}
#: T2-like base intensities relative to CSF (disc: annulus; the nucleus is brighter, see ``NUCLEUS_YOUNG``).
BASE_INTENSITY = {"air": 0.0, "soft": 0.27, "bone": 0.2, "body": 0.42, "disc": 0.3, "csf": 1.0, "cord": 0.5, "fat": 0.75}
NUCLEUS_YOUNG = 0.9
LABEL = {"body": 1, "disc": 2, "csf": 3, "cord": 4}
LEVEL_CANAL, LEVEL_CORD = 203, 204


@dataclasses.dataclass(frozen=True)
class Pose:
    """Patient position relative to the nominal field of view: shift (x, y, z) in mm and sagittal roll in degrees."""

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    roll_deg: float = 0.0


def draw_pose(rng: np.random.Generator) -> Pose:
    """A random positioning error: +/- 1 mm left-right, ~3 mm in plane, ~3 degrees roll."""
    shift = (float(rng.uniform(-1.0, 1.0)), float(rng.normal(0.0, 2.0)), float(rng.normal(0.0, 2.5)))
    return Pose(shift_mm=shift, roll_deg=float(rng.normal(0.0, 3.0)))


@dataclasses.dataclass(frozen=True)
class Phantom:
    """Noise-free rendering in R-A-S order.

    Attributes
    ----------
    signal : numpy.ndarray
        float32 (nx, ny, nz), CSF = 1 before site multipliers, partial-volume averaged.
    labels : numpy.ndarray
        uint8 coarse labels (1 body, 2 disc, 3 canal CSF, 4 cord).
    levels : numpy.ndarray
        uint16 level labels (``audit.ontology.LEVEL_VALUES``; canal 203, cord 204).
    tissue : numpy.ndarray
        int8 tissue codes (index into :data:`audit.synthetic.profiles.TISSUES`).
    affine : numpy.ndarray
        4x4 voxel-to-world (mm, RAS+) affine of the R-A-S arrays.
    levels_in_fov : tuple of str
        Vertebrae whose body centre lies inside the field of view.
    """

    signal: np.ndarray
    labels: np.ndarray
    levels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    levels_in_fov: tuple[str, ...]


class _Canvas:
    """Accumulates structures painted in priority order (later wins)."""

    def __init__(self, xs: np.ndarray, center: np.ndarray, ny: int, nz: int) -> None:
        self.xs, self.center = xs, center
        self.img = np.zeros((xs.size, ny, nz), dtype=np.float32)
        self.lab = np.zeros((center.size, ny, nz), dtype=np.uint8)
        self.lev = np.zeros((center.size, ny, nz), dtype=np.uint16)
        self.tis = np.zeros((center.size, ny, nz), dtype=np.int8)

    def paint(self, field: np.ndarray, value, half_width: float, q: float, tissue: str, label: int = 0, level: int = 0) -> None:
        inside = field <= 1.0
        if not inside.any():
            return
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        ys, zs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        g = 1.0 - np.abs(self.xs / half_width) ** q
        mask = field[ys, zs][None] <= g[:, None, None]
        sub = self.img[:, ys, zs]
        if np.ndim(value) == 0:
            sub[mask] = value
        else:
            np.copyto(sub, np.broadcast_to(np.asarray(value, dtype=np.float32)[ys, zs], sub.shape), where=mask)
        mc = mask[self.center]
        self.tis[:, ys, zs][mc] = TISSUE_CODE[tissue]
        if label:
            self.lab[:, ys, zs][mc] = label
            self.lev[:, ys, zs][mc] = level


def _local(yp: np.ndarray, zp: np.ndarray, curve: Curve, s: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (anterior u, inferior v) relative to the point ``P(s) + offset * n(s)``."""
    cy, cz, phi = curve.at(s)
    ny_, nz_ = np.cos(phi), np.sin(phi)
    dy, dz = yp - (cy + offset * ny_), zp - (cz + offset * nz_)
    return dy * ny_ + dz * nz_, dy * nz_ - dz * ny_


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return f / (f.std() + 1e-12)


def render_phantom(profile: SiteProfile, anatomy: Anatomy, pose: Pose, rng: np.random.Generator) -> Phantom:
    """Sample the phantom on ``profile``'s grid (R-A-S order), without bias field or noise.

    Tissue intensities include the site's tissue multipliers and contrast.
    """
    sp, th = float(profile.inplane_spacing_mm), float(profile.slice_thickness_mm)
    nx, ny, nz = profile.shape_ras
    curve = centerline(anatomy)
    tops, bottoms = anatomy.body_spans()
    # Nominal field of view: top 4 mm above the dens, A-P centred a little behind the posterior body line.
    on_spine = (curve.s >= -anatomy.dens_height) & (curve.s <= bottoms[-1])
    y_center = float(curve.y[on_spine].mean()) - 4.0
    z_top = float(np.interp(-anatomy.dens_height, curve.s, curve.z)) + 4.0
    y = y_center + (np.arange(ny) - (ny - 1) / 2) * sp
    z = z_top - (nz - 1) * sp + np.arange(nz) * sp
    x_centers = (np.arange(nx) - (nx - 1) / 2) * th
    offsets = ((np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5) * th
    sx, sy, sz = pose.shift_mm
    xs = (x_centers[:, None] + offsets[None, :]).ravel() - sx
    center = np.arange(nx) * SUBSAMPLES + SUBSAMPLES // 2

    yg, zg = np.meshgrid(y - sy, z - sz, indexing="ij")
    r = np.deg2rad(pose.roll_deg)
    yp, zp = np.cos(r) * yg + np.sin(r) * zg, -np.sin(r) * yg + np.cos(r) * zg
    # Signed anterior distance from the posterior vertebral line, for tubes (canal, cord, airway).
    s_of = np.interp(zp, curve.z[::-1], curve.s[::-1])
    u = (yp - np.interp(s_of, curve.s, curve.y)) * np.cos(np.interp(s_of, curve.s, curve.phi))

    mult = {t: profile.multiplier(t) for t in TISSUES}
    m = BASE_INTENSITY["soft"]

    def tv(tissue: str, value):
        return mult[tissue] * (m + profile.contrast * (np.asarray(value, dtype=np.float32) - m)) if tissue != "air" else 0.0

    canvas = _Canvas(xs, center, ny, nz)
    # Soft tissue: muscle with smooth texture, and fat pads behind the posterior elements.
    px = 5.0 / sp
    muscle = BASE_INTENSITY["soft"] * (1 + 0.12 * _smooth_noise(rng, (ny, nz), px))
    fat = (_smooth_noise(rng, (ny, nz), px) > 0.6) & (u < -(anatomy.canal_ap + 22.0))
    soft = np.where(fat, tv("fat", BASE_INTENSITY["fat"]), tv("soft", muscle)).astype(np.float32)
    canvas.img[:] = soft[None]
    canvas.tis[:] = np.where(fat, TISSUE_CODE["fat"], TISSUE_CODE["soft"]).astype(np.int8)[None]

    depth = np.interp(s_of, (tops + bottoms) / 2, anatomy.body_depth)
    prevertebral = np.interp(s_of, [tops[3], tops[5]], [4.0, 14.0])
    a_lo = depth + prevertebral
    canvas.paint(np.abs((u - a_lo - 6.5) / 6.5) ** 2, 0.0, 9.0, 2.0, "air")
    bone = tv("bone", BASE_INTENSITY["bone"])
    c_back = -(1.0 + anatomy.canal_ap)
    for k in range(len(LEVELS)):
        sc = (tops[k] + bottoms[k]) / 2 + 2.0
        du, dv = _local(yp, zp, curve, sc, c_back - 2.5)
        canvas.paint((du / 2.5) ** 2 + (dv / 6.0) ** 2, bone, 16.0, 2.0, "bone")
        du, dv = _local(yp, zp, curve, sc + 2.0, c_back - 13.0)
        canvas.paint((du / 8.0) ** 2 + (dv / 4.0) ** 2, bone, 5.0, 2.0, "bone")
    for offset, half_ap in ((anatomy.body_depth[0] * 0.55 + 9.5, 3.0), (c_back - 5.0, 5.0)):  # C1 arches
        du, dv = _local(yp, zp, curve, -0.55 * anatomy.dens_height, offset)
        canvas.paint((du / half_ap) ** 2 + (dv / 4.5) ** 2, bone, 14.0, 2.0, "bone")

    canal_c = -(1.0 + anatomy.canal_ap / 2)
    canvas.paint(((u - canal_c) / (anatomy.canal_ap / 2)) ** 2, tv("csf", BASE_INTENSITY["csf"]), anatomy.canal_lr / 2, 2.0,
                 "csf", LABEL["csf"], LEVEL_CANAL)
    canvas.paint(((u - canal_c - 0.8) / (anatomy.cord_ap / 2)) ** 2, tv("cord", BASE_INTENSITY["cord"]), anatomy.cord_lr / 2, 2.0,
                 "cord", LABEL["cord"], LEVEL_CORD)

    annulus = BASE_INTENSITY["disc"]
    peak = annulus + (NUCLEUS_YOUNG - annulus) * anatomy.disc_signal
    for j, name in enumerate(DISC_LEVELS):
        d = anatomy.disc_height[j]
        a = 0.49 * (anatomy.body_depth[j] + anatomy.body_depth[j + 1]) / 2
        du, dv = _local(yp, zp, curve, (bottoms[j] + tops[j + 1]) / 2, a)
        value = annulus + (peak - annulus) * np.exp(-((du / a) ** 2 + (dv / (d / 2)) ** 2) / 0.3)
        half_w = (anatomy.body_width[j] + anatomy.body_width[j + 1]) / 4
        canvas.paint(np.abs(du / a) ** 4 + (dv / (d / 2 + 1.5)) ** 2, tv("disc", value), half_w, 2.5, "disc",
                     LABEL["disc"], LEVEL_VALUES[name])

    marrow = BASE_INTENSITY["body"] * (1 + 0.06 * _smooth_noise(rng, (ny, nz), 2.0 / sp))
    for k, name in enumerate(LEVELS):
        a, b = anatomy.body_depth[k] / 2, anatomy.body_height[k] / 2
        du, dv = _local(yp, zp, curve, (tops[k] + bottoms[k]) / 2, a)
        field = np.abs(du / a) ** 4 + np.abs(dv / b) ** 6
        value = marrow * (1 - 0.5 * np.clip((field - 0.45) / 0.55, 0, 1))
        canvas.paint(field, tv("body", value), anatomy.body_width[k] / 2, 2.5, "body", LABEL["body"], LEVEL_VALUES[name])
        if k == 0:  # the dens rises from the C2 body, a little behind its centre
            du, dv = _local(yp, zp, curve, -anatomy.dens_height / 2 + 1.0, a * 0.55)
            field = (du / 5.0) ** 2 + np.abs(dv / (anatomy.dens_height / 2 + 1.0)) ** 2.5
            canvas.paint(field, tv("body", marrow * 0.9), 5.0, 2.0, "body", LABEL["body"], LEVEL_VALUES[name])

    signal = canvas.img.reshape(nx, SUBSAMPLES, ny, nz).mean(axis=1)
    signal = gaussian_filter(signal, sigma=(0.0, 0.5, 0.5), mode="nearest").astype(np.float32)
    affine = np.array([[th, 0, 0, x_centers[0]], [0, sp, 0, y[0]], [0, 0, sp, z[0]], [0, 0, 0, 1]], dtype=np.float64)
    centers_z = [np.interp((t + b) / 2, curve.s, curve.z) + sz for t, b in zip(tops, bottoms)]
    in_fov = tuple(lvl for lvl, cz in zip(LEVELS, centers_z) if z[0] <= cz <= z[-1])
    return Phantom(signal, canvas.lab, canvas.lev, canvas.tis, affine, in_fov)


def bias_field(shape: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field ``exp(strength * f)``, ``f`` a random quadratic in normalised coordinates.

    ``f`` falls anteriorly (posterior receive coil), is scaled to max |f| = 1 and centred to mean 0.
    """
    nx, ny, nz = shape
    xx, yy, zz = (np.linspace(-1, 1, n)[idx] for n, idx in ((nx, np.s_[:, None, None]), (ny, np.s_[None, :, None]), (nz, np.s_[None, None, :])))
    c = rng.normal(0.0, 0.4, size=6)
    f = (-0.8 + 0.2 * c[0]) * yy + c[1] * zz + c[2] * yy * zz + c[3] * zz**2 + c[4] * yy**2 + 0.3 * c[5] * xx
    f = np.broadcast_to(f, shape)
    f = f / (np.abs(f).max() + 1e-12)
    return np.exp(strength * (f - f.mean())).astype(np.float32)


def acquire(signal: np.ndarray, profile: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """Apply bias field, Rician noise (sigma = ``profile.noise_sigma``) and the site's scale, offset and dtype."""
    biased = signal * bias_field(signal.shape, profile.bias_strength, rng)
    sigma = np.float32(profile.noise_sigma)
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * sigma
    magnitude = np.sqrt((biased + noise[0]) ** 2 + noise[1] ** 2)
    stored = np.rint(magnitude * profile.intensity_scale + profile.intensity_offset)
    info = np.iinfo(profile.dtype)
    return np.clip(stored, info.min, info.max).astype(profile.dtype)


def reorient(arrays: list[np.ndarray], affine: np.ndarray, axcodes: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Reorder R-A-S arrays to ``axcodes`` and return them with the matching affine."""
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(axcodes)))
    out = [np.ascontiguousarray(apply_orientation(a, transform)) for a in arrays]
    return out, affine @ inv_ornt_aff(transform, arrays[0].shape)
