"""One synthetic exam in memory (:func:`generate_case`) and a stream of them for model training."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from audit.synthetic.anatomy import Anatomy, make_anatomy
from audit.synthetic.demographics import Patient, draw_patients
from audit.synthetic.profiles import PlantedEffects, SiteProfile, training_sites
from audit.synthetic.render import Pose, acquire, draw_pose, render_phantom, reorient

logger = logging.getLogger(__name__)

__all__ = ["SyntheticCase", "generate_case", "iter_training_cases", "case_rng"]

#: Independent random streams derived from one user seed.
STREAM_COHORT_CASE, STREAM_COHORT_PLAN, STREAM_TRAIN_CASE, STREAM_TRAIN_PLAN = 0, 1, 2, 3


def case_rng(seed: int, stream: int, index: int | None = None) -> np.random.Generator:
    """Generator for ``(seed, stream[, index])``: independent of the order or process cases are made in."""
    key = [int(seed), int(stream)] + ([] if index is None else [int(index)])
    return np.random.default_rng(np.random.SeedSequence(key))


@dataclasses.dataclass(frozen=True)
class SyntheticCase:
    """A synthetic exam: stored arrays, geometry and truth.

    Attributes
    ----------
    image : numpy.ndarray
        The stored image (site dtype and orientation).
    label : numpy.ndarray
        uint8 reference labels, spine_audit coarse values (1 body, 2 disc, 3 canal CSF, 4 cord).
    level_label : numpy.ndarray
        uint16 per-level labels (``audit.ontology.LEVEL_VALUES``; canal 203, cord 204; map ``spine_audit_levels``).
    tissue : numpy.ndarray
        int8 tissue class at each voxel centre (index into ``TISSUES``: 0 air, 1 soft, ...).
    affine : numpy.ndarray
        4x4 voxel-to-world affine (mm, RAS+), nibabel convention.
    spacing : tuple of float
        Voxel size along each array axis (mm).
    axcodes : str
        Orientation of the arrays (``nibabel.aff2axcodes(affine)``).
    site : str
        Site name.
    patient : Patient
        Latent demographics of the exam.
    anatomy : Anatomy
        Latent anatomy (disc heights, disc signal, ...).
    metadata : dict
        What the site knows (vendor, model, field strength, age, sex, race, ethnicity), un-formatted.
    truth : dict
        Latent acquisition and anatomy values (noise sigma, bias strength, contrast, pose, disc heights).
    """

    image: np.ndarray
    label: np.ndarray
    level_label: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    axcodes: str
    site: str
    patient: Patient
    anatomy: Anatomy
    metadata: dict[str, Any]
    truth: dict[str, Any]


def generate_case(rng: np.random.Generator, profile: SiteProfile, patient: Patient, planted: PlantedEffects) -> SyntheticCase:
    """Generate one exam of ``patient`` at site ``profile`` with the ``planted`` effects.

    Parameters
    ----------
    rng : numpy.random.Generator
        Exam-level randomness (positioning, small anatomical changes, texture, bias field, noise).
        The patient's anatomy comes from ``patient.anatomy_seed``, so repeated exams share it.
    profile : SiteProfile
        The site as configured; ``planted.site_profile`` degrades it when it is the hard site.
    patient : Patient
        Demographics and anatomy seed.
    planted : PlantedEffects
        Planted effects.

    Returns
    -------
    SyntheticCase
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"generate_case: rng must be a numpy.random.Generator; got {type(rng).__name__}")
    acquired = planted.site_profile(profile)
    anatomy = make_anatomy(patient.anatomy_seed, patient.age_years, planted, exam_rng=rng)
    pose: Pose = draw_pose(rng)
    phantom = render_phantom(acquired, anatomy, pose, rng)
    image = acquire(phantom.signal, acquired, rng)
    (image, label, levels, tissue), affine = reorient(
        [image, phantom.labels[...], phantom.levels, phantom.tissue], phantom.affine, acquired.axcodes
    )
    spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    metadata = {
        "site": profile.name,
        "patient_id": patient.patient_id,
        "vendor_raw": profile.vendor_raw,
        "scanner_model": profile.scanner_model,
        "field_strength_raw": profile.field_strength_raw,
        "field_strength_t": profile.field_strength_t,
        "age_years": patient.age_years,
        "sex": patient.sex,
        "race": patient.race,
        "ethnicity": patient.ethnicity,
    }
    truth = {
        **anatomy.as_dict(),
        "hard_site": profile.name == planted.hard_site,
        "noise_sigma": round(float(acquired.noise_sigma), 6),
        "bias_strength": round(float(acquired.bias_strength), 4),
        "contrast": round(float(acquired.contrast), 4),
        "pose_shift_mm": [round(v, 3) for v in pose.shift_mm],
        "pose_roll_deg": round(pose.roll_deg, 3),
        "levels_in_fov": list(phantom.levels_in_fov),
    }
    return SyntheticCase(
        image=image,
        label=label,
        level_label=levels,
        tissue=tissue,
        affine=affine,
        spacing=spacing,  # type: ignore[arg-type]
        axcodes=acquired.axcodes,
        site=profile.name,
        patient=patient,
        anatomy=anatomy,
        metadata=metadata,
        truth=truth,
    )


def iter_training_cases(
    n: int,
    seed: int = 0,
    sites: Sequence[SiteProfile] | None = None,
    planted: PlantedEffects | None = None,
) -> Iterator[SyntheticCase]:
    """Yield ``n`` synthetic exams in memory (no files), for training a demo model.

    Parameters
    ----------
    n : int
        Number of cases.
    seed : int
        Seed; the stream is independent of :func:`generate_cohort` with the same seed.
    sites : sequence of SiteProfile, optional
        Sites to draw from in turn; default :func:`training_sites` (all default sites but the hard one,
        so a model trained on them meets the hard site unseen).
    planted : PlantedEffects, optional
        Default ``PlantedEffects()`` (age effect on; the hard site applies only if it is in ``sites``).
    """
    if n < 0:
        raise ValueError(f"iter_training_cases: n must be >= 0; got {n!r}")
    sites = tuple(training_sites() if sites is None else sites)
    if not sites:
        raise ValueError("iter_training_cases: sites must name at least one SiteProfile; got an empty sequence")
    planted = PlantedEffects() if planted is None else planted
    patients = draw_patients(case_rng(seed, STREAM_TRAIN_PLAN), n)
    for i, patient in enumerate(patients):
        yield generate_case(case_rng(seed, STREAM_TRAIN_CASE, i), sites[i % len(sites)], patient, planted)
