"""Write a synthetic multi-source CT cohort in the CTSpine1K layout that the ``ctspine1k`` adapter reads.

::

    <out>/cohort.json                       seed, planted hard source, each case's truth (levels, variants, noise)
    <out>/sites/<source>.yaml               ctspine1k site config (label map verse: the T13 variant is label 28)
    <out>/<source>/<id>.nii.gz              CT in HU (int16), RAS
    <out>/<source>/<id>_seg.nii.gz          vertebra mask, VerSe codes
    <out>/<source>/<id>.json                dcm2niix-style sidecar: Manufacturer, model, KVP, SliceThickness, kernel, contrast
    <out>/<source>/metadata.csv             case_id, age, sex
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from audit.synthetic.cases import case_rng
from audit.synthetic.ct import CT_HARD_SOURCE, CT_SOURCES, CTCase, CTSource, generate_ct_case

logger = logging.getLogger(__name__)

__all__ = ["generate_ct_cohort", "iter_ct_training_cases", "ct_training_sources", "CT_SITE_SOURCE"]

#: Synthetic source -> the CTSpine1K source name its site config declares.
CT_SITE_SOURCE = {"colonog": "COLONOG", "hnscc-3dct-rt": "HNSCC-3DCT-RT", "msd-liver": "MSD-liver", "covid-19": "COVID-19"}
_STREAM_CT_CASE, _STREAM_CT_PLAN, _STREAM_CT_TRAIN = 10, 11, 12


def ct_training_sources(hard_source: str | None = CT_HARD_SOURCE) -> tuple[CTSource, ...]:
    """Every default source but the hard one (what the CT demo model is trained on)."""
    return tuple(s for s in CT_SOURCES if s.name != hard_source)


def iter_ct_training_cases(n: int, seed: int, sources: Sequence[CTSource] | None = None) -> Iterator[CTCase]:
    """``n`` synthetic CTs cycling over ``sources`` (default :func:`ct_training_sources`), independent of cohorts."""
    sources = tuple(sources or ct_training_sources())
    for i in range(int(n)):
        yield generate_ct_case(case_rng(seed, _STREAM_CT_TRAIN, i), sources[i % len(sources)])


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def generate_ct_cohort(
    out_dir: str | Path,
    *,
    n_cases: int = 32,
    seed: int = 0,
    sources: Sequence[CTSource] = CT_SOURCES,
    hard_source: str | None = CT_HARD_SOURCE,
) -> Path:
    """Generate ``n_cases`` synthetic CTs spread evenly over ``sources`` and write them to ``out_dir``.

    ``hard_source=None`` renders every source with standard dose and kernel (a null cohort). Returns the
    ``cohort.json`` path. A previous cohort in ``out_dir`` is replaced; a non-empty folder without one is refused.
    """
    out_dir = Path(out_dir)
    if int(n_cases) < 1:
        raise ValueError(f"generate_ct_cohort: n_cases must be >= 1; got {n_cases!r}")
    names = [s.name for s in sources]
    if hard_source is not None and hard_source not in names:
        raise ValueError(f"generate_ct_cohort: hard_source must be one of {names} or None; got {hard_source!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "cohort.json").is_file():
            raise FileExistsError(f"generate_ct_cohort: {str(out_dir)!r} is not empty and holds no cohort.json")
        for name in json.loads((out_dir / "cohort.json").read_text()).get("sites", {}):
            shutil.rmtree(out_dir / name, ignore_errors=True)
            (out_dir / "sites" / f"{name}.yaml").unlink(missing_ok=True)
    start = time.perf_counter()
    plan = case_rng(seed, _STREAM_CT_PLAN)
    order = plan.permutation(np.arange(int(n_cases)) % len(sources))
    (out_dir / "sites").mkdir(parents=True, exist_ok=True)
    rows, tables = [], {s.name: [] for s in sources}
    for i, k in enumerate(order):
        source = sources[int(k)]
        case = generate_ct_case(case_rng(seed, _STREAM_CT_CASE, i), source, hard=hard_source == source.name)
        local_id = f"ct{i:04d}"
        folder = out_dir / source.name
        folder.mkdir(exist_ok=True)
        _save(case.image, case.affine, folder / f"{local_id}.nii.gz")
        _save(case.label, case.affine, folder / f"{local_id}_seg.nii.gz")
        (folder / f"{local_id}.json").write_text(json.dumps(case.metadata, indent=1) + "\n")
        tables[source.name].append({"case_id": local_id, "age": int(plan.integers(25, 86)), "sex": str(plan.choice(["F", "M"]))})
        rows.append({"case_id": f"{source.name}/{local_id}", "site": source.name, "shape": list(case.image.shape), **case.truth})
    for source in sources:
        pd.DataFrame(tables[source.name], columns=["case_id", "age", "sex"]).to_csv(out_dir / source.name / "metadata.csv", index=False)
        config = {
            "name": source.name,
            "format": "ctspine1k",
            "root": "..",
            "label_map": "verse",
            "options": {"source": CT_SITE_SOURCE.get(source.name, "COLONOG"), "images_dir": source.name, "labels_dir": source.name,
                        "metadata": f"{source.name}/metadata.csv"},
        }
        (out_dir / "sites" / f"{source.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cohort = {
        "generator": "audit.synthetic.ct",
        "seed": int(seed),
        "n_cases": int(n_cases),
        "hard_source": hard_source,
        "sites": {s.name: {"config": f"sites/{s.name}.yaml", "hard": s.name == hard_source} for s in sources},
        "cases": rows,
    }
    path = out_dir / "cohort.json"
    path.write_text(json.dumps(cohort, indent=1) + "\n")
    logger.info("synthetic CT cohort: %d cases written to %s in %.2f s", n_cases, out_dir, time.perf_counter() - start)
    return path
