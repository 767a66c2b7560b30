"""Patient anatomy of the cervical spine phantom, in millimetres.

The phantom is built around the *posterior vertebral line* ``P(s)``, a curve in the sagittal plane
(``y`` anterior, ``z`` superior, mm) parametrised by arc length ``s`` (downwards from the top of the C2
body). Its direction turns linearly with ``s`` so the neck has a lordosis (convex anteriorly) of
``lordosis_deg`` between the C2 and C7 body centres. Vertebral bodies (C2..T1) and discs stack along
it; the spinal canal and cord run behind it.

Typical adult dimensions (scaled per patient): body height 13.5-15.5 mm, A-P depth 15-18 mm, L-R
width 17-24 mm; disc height 4.8-5.8 mm at age <= 30, minus ``disc_loss_mm_per_year`` per year after
30 when the age effect is planted.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from audit.synthetic.profiles import PlantedEffects

logger = logging.getLogger(__name__)

__all__ = ["LEVELS", "DISC_LEVELS", "Anatomy", "Curve", "make_anatomy", "centerline"]

LEVELS: tuple[str, ...] = ("C2", "C3", "C4", "C5", "C6", "C7", "T1")
DISC_LEVELS: tuple[str, ...] = tuple(f"{a}-{b}" for a, b in zip(LEVELS[:-1], LEVELS[1:]))

_BODY_HEIGHT = np.array([15.0, 13.5, 13.5, 13.5, 13.5, 14.5, 15.5])
_BODY_DEPTH = np.array([15.0, 15.5, 16.0, 16.5, 17.0, 17.0, 18.0])
_BODY_WIDTH = np.array([17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 24.0])
_DISC_HEIGHT_YOUNG = np.array([4.8, 5.3, 5.6, 5.8, 5.6, 5.2])
#: Relative age loss per disc level (mean 1): C5-C6 degenerates most.
_DISC_AGE_WEIGHT = np.array([0.8, 1.0, 1.15, 1.25, 1.1, 0.7])
_MIN_DISC_MM = 1.5


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Latent anatomy of one exam (all lengths in mm).

    Attributes
    ----------
    body_height, body_depth, body_width : tuple of float
        Per level of :data:`LEVELS` (S-I height, A-P depth, L-R width of the vertebral body).
    disc_height : tuple of float
        Per level of :data:`DISC_LEVELS`.
    disc_signal : float
        Nucleus T2 signal as a fraction of a young disc's (1 = young, 0.25 = fully degenerated).
    lordosis_deg : float
        Angle between the C2 and C7 body axes (positive = lordosis).
    dens_height : float
        Height of the C2 dens above the C2 body.
    canal_ap, canal_lr, cord_ap, cord_lr : float
        Spinal canal and cord diameters.
    age_years : float
        Age of the patient at this exam.
    """

    body_height: tuple[float, ...]
    body_depth: tuple[float, ...]
    body_width: tuple[float, ...]
    disc_height: tuple[float, ...]
    disc_signal: float
    lordosis_deg: float
    dens_height: float
    canal_ap: float
    canal_lr: float
    cord_ap: float
    cord_lr: float
    age_years: float

    @property
    def mean_disc_height(self) -> float:
        """Mean disc height over levels (mm)."""
        return float(np.mean(self.disc_height))

    def body_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Arc-length (top, bottom) of each body along ``P(s)``; C2 body top is 0."""
        tops, bottoms, s = [], [], 0.0
        for k, h in enumerate(self.body_height):
            tops.append(s)
            s += h
            bottoms.append(s)
            if k < len(self.disc_height):
                s += self.disc_height[k]
        return np.array(tops), np.array(bottoms)

    def as_dict(self) -> dict[str, object]:
        """Plain dict with per-level values keyed by level name (for cohort.json)."""
        return {
            "disc_height_mm": {lvl: round(float(h), 3) for lvl, h in zip(DISC_LEVELS, self.disc_height)},
            "mean_disc_height_mm": round(self.mean_disc_height, 3),
            "disc_signal": round(float(self.disc_signal), 4),
            "body_height_mm": {lvl: round(float(h), 3) for lvl, h in zip(LEVELS, self.body_height)},
            "lordosis_deg": round(float(self.lordosis_deg), 2),
            "canal_ap_mm": round(float(self.canal_ap), 2),
            "cord_ap_mm": round(float(self.cord_ap), 2),
        }


def make_anatomy(
    anatomy_seed: int,
    age_years: float,
    planted: PlantedEffects,
    exam_rng: np.random.Generator | None = None,
) -> Anatomy:
    """Draw a patient's anatomy; the same ``anatomy_seed`` gives the same person at every exam.

    Parameters
    ----------
    anatomy_seed : int
        Seed of the patient (shared by repeated exams).
    age_years : float
        Age at this exam; it changes discs only when ``planted.age_effect`` is True.
    planted : PlantedEffects
        Age-effect switch and rates.
    exam_rng : numpy.random.Generator, optional
        Adds small exam-to-exam changes (disc height +/- 0.1 mm, posture) when given.
    """
    rng = np.random.default_rng(int(anatomy_seed))
    size = float(np.clip(rng.normal(1.0, 0.05), 0.85, 1.15))
    height = _BODY_HEIGHT * size * rng.normal(1.0, 0.03, size=7)
    depth = _BODY_DEPTH * size * rng.normal(1.0, 0.03, size=7)
    width = _BODY_WIDTH * size * rng.normal(1.0, 0.03, size=7)
    disc_young = _DISC_HEIGHT_YOUNG * rng.normal(1.0, 0.07) * rng.normal(1.0, 0.05, size=6)
    signal_factor = float(rng.normal(1.0, 0.05))
    lordosis = float(np.clip(rng.normal(16.0, 8.0), -10.0, 40.0))
    dens = float(rng.normal(11.0, 1.0))
    canal_ap, canal_lr = float(rng.normal(14.0, 1.2)), float(rng.normal(23.0, 1.5))
    cord_ap, cord_lr = float(rng.normal(7.5, 0.6)), float(rng.normal(11.5, 0.8))

    disc_age = float(age_years) if planted.age_effect else float(planted.reference_age)
    years = max(disc_age - 30.0, 0.0)
    disc = disc_young - planted.disc_loss_mm_per_year * _DISC_AGE_WEIGHT * years
    signal = max(0.25, 1.0 - planted.disc_signal_loss_per_year * years) * signal_factor
    if exam_rng is not None:
        disc = disc + exam_rng.normal(0.0, 0.1, size=6)
        lordosis += float(exam_rng.normal(0.0, 3.0))
    disc = np.maximum(disc, _MIN_DISC_MM)
    return Anatomy(
        body_height=tuple(float(v) for v in height),
        body_depth=tuple(float(v) for v in depth),
        body_width=tuple(float(v) for v in width),
        disc_height=tuple(float(v) for v in disc),
        disc_signal=float(np.clip(signal, 0.1, 1.2)),
        lordosis_deg=lordosis,
        dens_height=dens,
        canal_ap=canal_ap,
        canal_lr=canal_lr,
        cord_ap=cord_ap,
        cord_lr=cord_lr,
        age_years=float(age_years),
    )


@dataclasses.dataclass(frozen=True)
class Curve:
    """Samples of the posterior vertebral line: arc length ``s``, points ``y``, ``z`` and angle ``phi``.

    The tangent (pointing inferior) is ``(sin phi, -cos phi)`` and the anterior normal ``(cos phi, sin phi)``.
    """

    s: np.ndarray
    y: np.ndarray
    z: np.ndarray
    phi: np.ndarray

    def at(self, s: float) -> tuple[float, float, float]:
        """(y, z, phi) at arc length ``s`` (linear interpolation)."""
        return (float(np.interp(s, self.s, self.y)), float(np.interp(s, self.s, self.z)), float(np.interp(s, self.s, self.phi)))


def centerline(anatomy: Anatomy, *, ds: float = 0.5, margin_mm: float = 60.0) -> Curve:
    """The posterior vertebral line ``P(s)`` with ``P(0) = (0, 0)`` at the top of the C2 body."""
    tops, bottoms = anatomy.body_spans()
    centers = (tops + bottoms) / 2
    s_mid = (centers[0] + centers[5]) / 2
    kappa = np.deg2rad(anatomy.lordosis_deg) / (centers[5] - centers[0])
    s = np.arange(-anatomy.dens_height - margin_mm, bottoms[-1] + margin_mm + ds, ds)
    phi = -kappa * (s - s_mid)
    ty, tz = np.sin(phi), -np.cos(phi)
    y = np.concatenate([[0.0], np.cumsum((ty[1:] + ty[:-1]) / 2 * ds)])
    z = np.concatenate([[0.0], np.cumsum((tz[1:] + tz[:-1]) / 2 * ds)])
    i0 = int(np.argmin(np.abs(s)))
    return Curve(s=s, y=y - y[i0], z=z - z[i0], phi=phi)
