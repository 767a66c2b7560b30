"""Synthetic multi-site cervical spine MRI cohort with planted, known disparities.

Sagittal T2-like volumes (C2 to T1 vertebral bodies and discs on a lordotic curve, spinal canal and
cord, soft tissue, airway) rendered on each site's grid with partial volume, a bias field, Rician noise
scaled by field strength, the site's intensity scale and orientation; patients drawn from CSpineSeg's
published composition; reference labels in spine_audit coarse values. See ``docs/synthetic.md``.

Typical use::

    from audit.synthetic import generate_cohort, PlantedEffects, null_sites
    info = generate_cohort("cohort", n_cases=48, seed=0)                       # hard site-D + age effect
    null = generate_cohort("null", sites=null_sites(), planted=PlantedEffects.none())
"""

from audit.synthetic.anatomy import DISC_LEVELS, LEVELS, Anatomy
from audit.synthetic.cases import SyntheticCase, generate_case, iter_training_cases
from audit.synthetic.cohort import CohortInfo, cohort_case_files, generate_cohort, load_truth
from audit.synthetic.demographics import (
    CSPINESEG_ETHNICITY,
    CSPINESEG_RACE,
    CSPINESEG_SEX,
    Patient,
    draw_patients,
)
from audit.synthetic.profiles import (
    DEFAULT_SITES,
    HARD_SITE,
    TISSUES,
    MetadataDialect,
    PlantedEffects,
    SiteProfile,
    null_sites,
    profile_from_dict,
    training_sites,
)

__all__ = [
    "cohort_case_files",
    "SiteProfile",
    "MetadataDialect",
    "DEFAULT_SITES",
    "HARD_SITE",
    "TISSUES",
    "PlantedEffects",
    "null_sites",
    "training_sites",
    "profile_from_dict",
    "Patient",
    "draw_patients",
    "CSPINESEG_RACE",
    "CSPINESEG_SEX",
    "CSPINESEG_ETHNICITY",
    "Anatomy",
    "LEVELS",
    "DISC_LEVELS",
    "SyntheticCase",
    "generate_case",
    "iter_training_cases",
    "CohortInfo",
    "generate_cohort",
    "load_truth",
]
