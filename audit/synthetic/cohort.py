"""Write a synthetic multi-site cohort to disk in the layout the ``nifti_table`` site adapter reads.

::

    <out>/cohort.json                        seed, planted effects, site profiles, each case's latent truth
    <out>/sites/<site>.yaml                  nifti_table site config (root ../<site>)
    <out>/<site>/images/<local_id>.nii.gz    T2-like sagittal volume (site dtype, spacing, orientation)
    <out>/<site>/labels/<local_id>.nii.gz    reference labels (spine_audit coarse values)
    <out>/<site>/metadata.csv                site-flavoured raw metadata (no truth, no difficulty columns)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from audit.synthetic.cases import STREAM_COHORT_CASE, STREAM_COHORT_PLAN, case_rng, generate_case
from audit.synthetic.demographics import Patient, draw_patients, metadata_row
from audit.synthetic.profiles import DEFAULT_SITES, PlantedEffects, SiteProfile, null_sites

logger = logging.getLogger(__name__)

__all__ = ["GENERATOR_VERSION", "CohortInfo", "CaseSpec", "plan_cohort", "generate_cohort", "generate_protocol_cohort", "load_truth", "cohort_case_files"]

GENERATOR_VERSION = "1.0"
_MISSABLE = ("age", "sex", "race", "ethnicity")


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """What to generate for one case of a cohort (decided up front, from the seed)."""

    index: int
    site: str
    local_id: str
    patient: Patient
    missing: tuple[str, ...]

    @property
    def case_id(self) -> str:
        """Audit-wide id, ``<site>/<local_id>``."""
        return f"{self.site}/{self.local_id}"


@dataclasses.dataclass(frozen=True)
class CohortInfo:
    """A written cohort.

    Attributes
    ----------
    out_dir : Path
        Cohort folder.
    seed, n_cases, n_patients : int
        Seed and sizes.
    site_names : tuple of str
        Sites, in the order given.
    site_configs : tuple of Path
        ``sites/<site>.yaml`` for each site (same order).
    cohort_json : Path
        The truth file.
    planted : PlantedEffects
        What was planted.
    """

    out_dir: Path
    seed: int
    n_cases: int
    n_patients: int
    site_names: tuple[str, ...]
    site_configs: tuple[Path, ...]
    cohort_json: Path
    planted: PlantedEffects


def plan_cohort(n_cases: int, seed: int, sites: Sequence[SiteProfile], repeat_fraction: float) -> list[CaseSpec]:
    """Decide patients, sites, repeated exams and missing metadata for every case.

    ``round(n_cases * f / (1 + f))`` cases are second exams of patients drawn without replacement,
    at the same site, 0.5 to 2 years later; patients are spread evenly over sites in random order.
    """
    rng = case_rng(seed, STREAM_COHORT_PLAN)
    n_repeat = int(round(n_cases * repeat_fraction / (1 + repeat_fraction)))
    n_patients = n_cases - n_repeat
    patients = draw_patients(rng, n_patients)
    site_of = rng.permutation(np.arange(n_patients) % len(sites))
    repeated = set(int(i) for i in rng.choice(n_patients, size=n_repeat, replace=False))
    specs: list[CaseSpec] = []
    for i, patient in enumerate(patients):
        exams = [patient]
        if i in repeated:
            later = round(patient.age_years + float(rng.uniform(0.5, 2.0)), 1)
            exams.append(dataclasses.replace(patient, age_years=min(later, 95.0), exam=2))
        for exam in exams:
            profile = sites[int(site_of[i])]
            missing = tuple(k for k, m in zip(_MISSABLE, rng.random(len(_MISSABLE)) < profile.dialect.missing_rate) if m)
            local_id = f"sub-{patient.patient_id[1:]}_ses-{exam.exam}"
            specs.append(CaseSpec(len(specs), profile.name, local_id, exam, missing))
    return specs


def _check_args(out_dir: Path, n_cases: int, sites: Sequence[SiteProfile], planted: PlantedEffects, repeat_fraction: float, workers: int) -> None:
    if int(n_cases) < 1:
        raise ValueError(f"generate_cohort: n_cases must be >= 1; got {n_cases!r}")
    if not sites:
        raise ValueError("generate_cohort: sites must hold at least one SiteProfile; got an empty sequence")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"generate_cohort: site names must be unique; got {names}")
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ValueError(f"generate_cohort: repeat_fraction must be in [0, 1]; got {repeat_fraction!r}")
    if int(workers) < 1:
        raise ValueError(f"generate_cohort: workers must be >= 1; got {workers!r}")
    planted.check_sites(sites)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "cohort.json").is_file():
        raise FileExistsError(f"generate_cohort: out_dir {str(out_dir)!r} is not empty and holds no cohort.json; "
                              "give an empty or new folder, or a previous synthetic cohort to overwrite")


def _clear_previous(out_dir: Path) -> None:
    """Remove the files a previous cohort wrote in ``out_dir`` (only paths named in its cohort.json)."""
    previous = json.loads((out_dir / "cohort.json").read_text())
    for name in previous.get("sites", {}):
        for path in (out_dir / name, out_dir / "sites" / f"{name}.yaml"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
    (out_dir / "cohort.json").unlink()


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def _make_case(spec: CaseSpec, profile: SiteProfile, planted: PlantedEffects, seed: int, out_dir: Path) -> dict[str, Any]:
    case = generate_case(case_rng(seed, STREAM_COHORT_CASE, spec.index), profile, spec.patient, planted)
    site_dir = out_dir / spec.site
    _save_nifti(case.image, case.affine, site_dir / "images" / f"{spec.local_id}.nii.gz")
    _save_nifti(case.label, case.affine, site_dir / "labels" / f"{spec.local_id}.nii.gz")
    return {
        "case_id": spec.case_id,
        "site": spec.site,
        "local_id": spec.local_id,
        **spec.patient.as_dict(),
        "missing_metadata": list(spec.missing),
        "shape": list(case.image.shape),
        "spacing_mm": [round(v, 4) for v in case.spacing],
        "axcodes": case.axcodes,
        **case.truth,
    }


def _site_config(profile: SiteProfile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "format": "nifti_table",
        "root": f"../{profile.name}",
        "label_map": "spine_audit",
        "options": {
            "images": "images/{case_id}.nii.gz",
            "labels": "labels/{case_id}.nii.gz",
            "metadata": "metadata.csv",
            "columns": profile.dialect.column_map,
        },
        "defaults": {},
    }


def generate_cohort(
    out_dir: str | Path,
    *,
    n_cases: int = 48,
    seed: int = 0,
    sites: Sequence[SiteProfile] = DEFAULT_SITES,
    planted: PlantedEffects = PlantedEffects(),
    repeat_fraction: float = 0.1,
    workers: int = 1,
) -> CohortInfo:
    """Generate a synthetic multi-site cohort and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Target folder: new, empty, or a previous synthetic cohort (whose files are replaced).
    n_cases : int
        Number of exams (first exams plus repeats).
    seed : int
        Seed; the same seed and arguments give byte-identical files, whatever ``workers``.
    sites : sequence of SiteProfile
        Sites; patients are spread evenly over them.
    planted : PlantedEffects
        Planted disparities (``PlantedEffects.none()`` for a null cohort, with :func:`null_sites`).
    repeat_fraction : float
        Repeated exams per first exam (0.1: about 9 % of the cases are second exams).
    workers : int
        Processes used to generate cases.

    Returns
    -------
    CohortInfo
    """
    out_dir = Path(out_dir)
    sites = tuple(sites)
    _check_args(out_dir, n_cases, sites, planted, repeat_fraction, workers)
    start = time.perf_counter()
    if (out_dir / "cohort.json").is_file():
        _clear_previous(out_dir)
    specs = plan_cohort(int(n_cases), int(seed), sites, float(repeat_fraction))
    by_name = {s.name: s for s in sites}
    for s in sites:
        (out_dir / s.name / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / s.name / "labels").mkdir(parents=True, exist_ok=True)
    (out_dir / "sites").mkdir(parents=True, exist_ok=True)
    args = [(spec, by_name[spec.site], planted, int(seed), out_dir) for spec in specs]
    if workers > 1 and len(specs) > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            rows = list(pool.map(_make_case, *zip(*args), chunksize=max(1, len(specs) // (4 * workers))))
    else:
        rows = [_make_case(*a) for a in args]

    configs = []
    for profile in sites:
        site_specs = [s for s in specs if s.site == profile.name]
        table = pd.DataFrame(
            [metadata_row(s.patient, profile, s.local_id, {k: True for k in s.missing}) for s in site_specs],
            columns=list(profile.dialect.column_map.values()),
        )
        table.to_csv(out_dir / profile.name / "metadata.csv", index=False)
        path = out_dir / "sites" / f"{profile.name}.yaml"
        path.write_text(yaml.safe_dump(_site_config(profile), sort_keys=False))
        configs.append(path)
    cohort = {
        "generator": "audit.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_cases": len(specs),
        "n_patients": len({s.patient.patient_id for s in specs}),
        "repeat_fraction": float(repeat_fraction),
        "planted": planted.as_dict(),
        "sites": {
            s.name: {
                "config": f"sites/{s.name}.yaml",
                "hard": s.name == planted.hard_site,
                "profile": s.as_dict(),
                "acquired_profile": planted.site_profile(s).as_dict(),
            }
            for s in sites
        },
        "cases": rows,
    }
    cohort_json = out_dir / "cohort.json"
    cohort_json.write_text(json.dumps(cohort, indent=1, sort_keys=False) + "\n")
    logger.info("synthetic cohort: %d cases at %d sites written to %s in %.2f s", len(specs), len(sites), out_dir,
                time.perf_counter() - start)
    return CohortInfo(
        out_dir=out_dir,
        seed=int(seed),
        n_cases=len(specs),
        n_patients=cohort["n_patients"],
        site_names=tuple(s.name for s in sites),
        site_configs=tuple(configs),
        cohort_json=cohort_json,
        planted=planted,
    )


def cohort_case_files(cohort_dir: str | Path) -> list[tuple[str, Path, Path, str]]:
    """``(case_id, image, label, site)`` of every case of a generated cohort (``<site>/images``, ``<site>/labels``), sorted."""
    out = []
    for site_dir in sorted(p for p in Path(cohort_dir).iterdir() if (p / "images").is_dir()):
        for img in sorted((site_dir / "images").glob("*.nii.gz")):
            out.append((f"{site_dir.name}/{img.name[: -len('.nii.gz')]}", img, site_dir / "labels" / img.name, site_dir.name))
    return out


def load_truth(cohort_dir: str | Path) -> pd.DataFrame:
    """Each case's latent truth from ``cohort.json`` as one flat row per case (for tests and validation).

    Columns include ``case_id``, ``site``, ``patient_id``, ``exam``, ``age_years``, ``sex``, ``race``,
    ``ethnicity``, ``hard_site``, ``mean_disc_height_mm``, ``disc_signal``, ``noise_sigma``,
    ``bias_strength``, ``contrast`` and ``disc_height_mm.<level>``.
    """
    path = Path(cohort_dir) / "cohort.json"
    if not path.is_file():
        raise FileNotFoundError(f"load_truth: no cohort.json in {str(cohort_dir)!r}")
    cases = json.loads(path.read_text())["cases"]
    return pd.json_normalize(cases, max_level=1)


def generate_protocol_cohort(settings: Any, out_dir: str | Path, *, workers: int = 1) -> Path:
    """Write the cohort a protocol's ``synthetic_cohort`` section describes (MRI, or CT with ``modality: ct``).

    ``settings`` is an :class:`audit.protocol.SyntheticCohortSettings`; for CT, ``hard_site`` names the planted hard
    source (:func:`audit.synthetic.ct_cohort.generate_ct_cohort`). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    if settings.modality == "ct":
        from audit.synthetic.ct_cohort import generate_ct_cohort

        generate_ct_cohort(out_dir, n_cases=settings.n_cases, seed=settings.seed, hard_source=settings.hard_site)
        return out_dir
    planted = PlantedEffects(hard_site=settings.hard_site, age_effect=settings.age_effect)
    sites = null_sites() if settings.null_sites else DEFAULT_SITES
    generate_cohort(out_dir, n_cases=settings.n_cases, seed=settings.seed, sites=sites, planted=planted, repeat_fraction=settings.repeat_fraction,
                    workers=workers)
    return out_dir
