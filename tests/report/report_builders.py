"""Named builders of synthetic run folders for the report tests (no pipeline, no statistics layer needed).

``synthetic_run(run_dir, n_cases=48)`` writes what the pipeline writes (docs/report.md, "Run folder"):
protocol.yaml, manifest.csv, metrics.csv, failures.csv, tables/*.csv, results.json with every section
and every statistics table of the contract, and tiny NIfTI image / reference / prediction files for the
gallery. The statistics are simple (normal-approximation intervals), not the audit's methods: the report
must show whatever results.json holds. Edge values are planted on purpose: ``inf``, ``None``, p < 0.001,
descriptive-only groups, an intersection axis, one failed case, Unknown demographics, all three
acceptance outcomes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from audit.protocol import canonical_sha256, load_protocol, protocol_from_dict, protocol_to_dict
from audit.report import write_tables

REPO = Path(__file__).resolve().parents[2]
STRUCTURES = ("vertebral_body", "intervertebral_disc", "spinal_canal", "spinal_cord")
METRICS = ("dice", "hd95", "nsd_2mm")
HIGHER = {"dice": True, "hd95": False, "nsd_2mm": True}
SITES = (("site-A", "Siemens", "3T"), ("site-B", "GE", "3T"), ("site-C", "Philips", "1.5T"))
#: Sites the builder's model card says the model was trained on: site-C is the one truly external site.
TRAINING_SITES = ("site-A", "site-B")
AXES = ("site", "vendor", "field_strength", "sex", "age_band")
INTERSECTION = ("race", "sex")
MIN_GROUP = 5
FAILED_CASE_INDEX = 3
#: An identifying folder planted in the failed case's error messages; the report and the package must not show it.
LEAKY_DIR = "/data/hospital/DOE_JOHN_1234567"


def spine_phantom(shift: int = 0, shape: tuple[int, int, int] = (5, 40, 56)) -> np.ndarray:
    """Coarse spine labels (1 body, 2 disc, 3 canal, 4 cord) on an (R, A, S) grid, shifted ``shift`` voxels in S."""
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(5):
        s0 = 4 + 10 * k + shift
        labels[:, 8:22, max(s0, 0) : max(s0 + 7, 0)] = 1
        labels[:, 9:21, max(s0 + 7, 0) : max(s0 + 10, 0)] = 2
    labels[:, 24:32, :] = 3
    labels[:, 26:30, :] = 4
    return labels


def write_case_files(folder: Path, name: str, shift: int, seed: int) -> tuple[str, str, str]:
    """Write image, reference and prediction NIfTI files (1 x 1 x 3 mm, RAS) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([3.0, 1.0, 1.0, 1.0])
    reference = spine_phantom(0)
    prediction = spine_phantom(shift)
    rng = np.random.default_rng(seed)
    image = np.choose(reference, [100.0, 400.0, 250.0, 600.0, 350.0]) + rng.normal(0, 20, reference.shape)
    paths = []
    for kind, data in (("image", image.astype(np.float32)), ("label", reference), ("prediction", prediction)):
        path = folder / f"{name}_{kind}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        paths.append(str(path))
    return paths[0], paths[1], paths[2]


def _manifest(n_cases: int, sites: Sequence[tuple[str, str, str]], rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    races = ("White", "Black or African American", "Asian", "Unknown")
    for i in range(n_cases):
        site, vendor, field = sites[i % len(sites)]
        patient = f"P{i // 2 if i % 7 == 0 else i:04d}"  # a few patients with two exams
        rows.append({
            "case_id": f"{site}/case-{i:04d}", "site": site, "patient_id": patient, "vendor": vendor,
            "field_strength_t": {"3T": 3.0, "1.5T": 1.5}[field], "field_strength": field, "scanner_model": f"{vendor}-model",
            "age_years": float(rng.integers(20, 85)) if i % 11 else math.nan,
            "sex": ("F", "M")[i % 2] if i % 13 else "Unknown",
            "race": races[int(rng.choice(4, p=[0.6, 0.2, 0.15, 0.05]))],
            "ethnicity": "Not Hispanic or Latino" if i % 5 else "Unknown", "label_map": "spine_audit",
        })  # fmt: skip
    manifest = pd.DataFrame(rows)
    bands = pd.cut(manifest["age_years"], [18, 40, 60, 120], right=False, labels=["18-39", "40-59", "60+"])
    manifest["age_band"] = bands.astype(object).where(bands.notna(), "Unknown")
    return manifest


def _metrics(manifest: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i, case in enumerate(manifest.itertuples(index=False)):
        hard = 0.06 if case.site == "site-C" else 0.0
        for s, structure in enumerate(STRUCTURES):
            dice = float(np.clip(rng.normal(0.9 - 0.03 * s - hard, 0.03), 0, 1))
            values = {"dice": dice, "hd95": float(rng.gamma(2.0, 1.0 + 10 * hard)), "nsd_2mm": float(np.clip(dice + 0.03, 0, 1))}
            status = "failed" if i == FAILED_CASE_INDEX else ("missed" if (i, s) == (5, 3) else "ok")
            if status == "missed":
                values = {"dice": 0.0, "hd95": 101.2, "nsd_2mm": 0.0}
            for metric in METRICS:
                rows.append({
                    "case_id": case.case_id, "structure": structure, "metric": metric,
                    "value": math.nan if status == "failed" else values[metric], "status": status,
                    "reference_volume_ml": 10.0 + s, "predicted_volume_ml": 10.0 + s + rng.normal(0, 0.5),
                    "error": f"ValueError: corrupt image {LEAKY_DIR}/img.nii.gz" if status == "failed" else None,
                })  # fmt: skip
    return pd.DataFrame(rows)


def _estimate(sub: pd.DataFrame, axis: str, group: str, structure: str, metric: str) -> dict:
    ok = sub[sub["status"] != "failed"]
    values = ok["value"].to_numpy(float)
    n, n_pat = len(values), int(ok["patient_id"].nunique())
    mean = float(values.mean()) if n else math.nan
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    half = 1.96 * sd / math.sqrt(n) if n > 1 else math.inf  # one case: an infinite interval, shown as ∞
    fail = float((values < 0.7).mean()) if metric == "dice" and n else None
    return {
        "axis": axis, "group": group, "structure": structure, "metric": metric, "n_cases": len(sub), "n_patients": n_pat,
        "n_failed": int((sub["status"] == "failed").sum()), "n_both_empty": 0, "mean": mean, "median": float(np.median(values)) if n else None,
        "sd": sd if n > 1 else None, "ci_low": mean - half, "ci_high": mean + half, "ci_method": "normal approximation (test builder)",
        "failure_rate": fail, "failure_ci_low": 0.0 if fail is not None else None, "failure_ci_high": min(1.0, fail + 0.2) if fail is not None else None,
        "mdd": None, "descriptive_only": n_pat < MIN_GROUP, "is_reference": False,
    }  # fmt: skip


def _statistics(table: pd.DataFrame) -> dict:
    overall = [_estimate(table[(table.structure == s) & (table.metric == m)], "overall", "all", s, m) for s in STRUCTURES for m in METRICS]
    estimates, gaps, equivalence, power = [], [], [], []
    for axis in (*AXES, " x ".join(INTERSECTION)):
        key = table[list(INTERSECTION)].astype(str).agg(" x ".join, axis=1) if " x " in axis else table[axis].astype(str)
        groups = sorted(key.unique())
        sizes = {g: table.loc[key == g, "patient_id"].nunique() for g in groups}
        reference = max((g for g in groups if g != "Unknown"), key=lambda g: (sizes[g], g))
        for s in STRUCTURES:
            for m in METRICS:
                rows = {g: _estimate(table[(key == g) & (table.structure == s) & (table.metric == m)], axis, g, s, m) for g in groups}
                rows[reference]["is_reference"] = True
                estimates += rows.values()
                ref = rows[reference]
                for g, row in rows.items():
                    if g == reference:
                        continue
                    diff = row["mean"] - ref["mean"]
                    p = None if row["descriptive_only"] else float(min(1.0, 0.5 * math.exp(-abs(diff) * 40)))
                    gaps.append({
                        "axis": axis, "comparison": "vs_reference", "group": g, "reference": reference, "structure": s, "metric": m,
                        "difference": diff, "diff_ci_low": diff - 0.02, "diff_ci_high": diff + 0.02,
                        "ratio": row["mean"] / ref["mean"] if ref["mean"] else math.inf, "ratio_ci_low": None, "ratio_ci_high": None,
                        "test": "welch" if HIGHER[m] else "mann_whitney", "statistic": diff * 10, "p_value": p,
                        "p_holm": None if p is None else min(1.0, p * 8), "p_fdr_bh": None if p is None else min(1.0, p * 2),
                        "p_adjusted": None if p is None else min(1.0, p * 8), "significant": bool(p is not None and p * 8 < 0.05),
                        "descriptive_only": row["descriptive_only"], "family": "pre-specified" if m == "dice" and " x " not in axis else "exploratory",
                    })  # fmt: skip
                    power.append({"axis": axis, "group": g, "reference": reference, "structure": s, "metric": m, "n_patients": row["n_patients"],
                                  "sd": row["sd"], "mdd": None if row["descriptive_only"] else 0.04, "descriptive_only": row["descriptive_only"]})  # fmt: skip
                    if m == "dice" and " x " not in axis:
                        equivalence.append({
                            "axis": axis, "group": g, "reference": reference, "structure": s, "metric": m, "margin": 0.03, "difference": diff,
                            "ci_low": diff - 0.015, "ci_high": diff + 0.015, "p_tost": _tost_p(diff, margin=0.03, half_width=0.015),
                            "equivalent": abs(diff) + 0.015 < 0.03, "descriptive_only": row["descriptive_only"],
                        })  # fmt: skip
    adjusted = [{"metric": "dice", "structure": s, "model": "mixedlm", "term": term, "estimate": est, "ci_low": est - 0.03, "ci_high": est + 0.03,
                 "p_value": p, "n_obs": int(table["case_id"].nunique()) - 1, "n_groups": 3}
                for s in STRUCTURES for term, est, p in (("Intercept", 0.9, 1e-200), ("vendor: Philips vs Siemens", -0.06, 0.002), ("age_years", -0.0004, 0.41))]  # fmt: skip
    acceptance = [
        {"id": "overall-dice", "description": "Lower 95% bound of mean Dice at least 0.80 for every structure", "metric": "dice", "structure": s,
         "scope": "overall", "group": "all", "estimate": "mean", "bound": "lower", "operator": ">=", "threshold": 0.8,
         "value": o["ci_low"], "status": "pass" if o["ci_low"] >= 0.8 else "fail", "reason": "lower mean vs 0.8"}
        for s, o in zip(STRUCTURES, overall[:: len(METRICS)])
    ]  # fmt: skip
    acceptance.append({"id": "site-hd95", "description": "Upper bound of mean HD95 at most 3 mm at every site <script>x</script>", "metric": "hd95",
                       "structure": "spinal_cord", "scope": "site", "group": "site-C", "estimate": "mean", "bound": "upper", "operator": "<=",
                       "threshold": 3.0, "value": None, "status": "inconclusive", "reason": "interval not estimable"})  # fmt: skip
    criteria = {}
    for row in acceptance:
        rank = {"pass": 0, "inconclusive": 1, "fail": 2}
        if rank[row["status"]] >= rank[criteria.get(row["id"], "pass")]:
            criteria[row["id"]] = row["status"]
    settings = {"unit": "patient (cluster bootstrap)", "confidence_level": 0.95, "bootstrap_iterations": 200, "bootstrap_method": "percentile",
                "seed": 7, "overall_strata": "site", "multiplicity": "holm", "family_size": len(gaps), "alpha": 0.05,
                "family_sizes": {f: sum(g["family"] == f and g["p_value"] is not None for g in gaps) for f in ("pre-specified", "exploratory")}, "min_group_size": MIN_GROUP,
                "tests": {"bounded metrics": "Welch t-test on patient means", "distance metrics": "Mann-Whitney U on patient means"}}  # fmt: skip
    small = sorted({f"{r['axis']}={r['group']}" for r in estimates if r["descriptive_only"]})
    return {"overall": overall, "group_estimates": estimates, "gaps": gaps, "equivalence": equivalence, "power": power, "adjusted": adjusted,
            "acceptance": acceptance, "criteria": criteria, "settings": settings,
            "warnings": [f"{len(small)} group(s) have fewer than {MIN_GROUP} patients and are descriptive only: {', '.join(small)}"]}  # fmt: skip


def _tost_p(diff: float, *, margin: float, half_width: float) -> float:
    """Normal-approximation TOST p-value consistent with a 90% interval ``diff +/- half_width`` (alpha 0.05):
    p < 0.05 exactly when the interval lies inside ``+/- margin``, so the table never says EQUIVALENT beside p 0.2."""
    se = half_width / NormalDist().inv_cdf(0.95)
    return 1.0 - NormalDist().cdf((margin - abs(diff)) / se)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def analyze_statistics(table: pd.DataFrame, protocol: dict, *, iterations: int = 200) -> dict:
    """The real statistics layer (``audit.stats.analyze``) on the builder's analysis table, as results.json holds it."""
    from audit.stats import analyze

    proto = protocol_from_dict({k: v for k, v in protocol.items() if k != "base_dir"})
    settings = dataclasses.replace(proto.statistics, bootstrap_iterations=iterations)
    results = analyze(table, structures=list(STRUCTURES), metrics=list(METRICS), subgroups=proto.subgroups, statistics=settings,
                      acceptance=proto.acceptance, higher_is_better=HIGHER)  # fmt: skip
    return results.to_dict()


def flow_records(manifest: pd.DataFrame, metrics: pd.DataFrame, failures: Sequence[dict]) -> list[dict]:
    """Participant flow rows as the pipeline writes them (``audit.results.participant_flow``)."""
    from audit.records import CaseFailure
    from audit.results import participant_flow

    return participant_flow(manifest, metrics, [CaseFailure(**f) for f in failures])


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """sha256 of the de-identified manifest's canonical CSV (path columns dropped, columns sorted; docs/report.md)."""
    deidentified = manifest.drop(columns=["image_path", "label_path", "prediction_path"])
    text = deidentified.reindex(sorted(deidentified.columns), axis=1).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def synthetic_run(
    run_dir: Path,
    *,
    n_cases: int = 48,
    sites: Sequence[tuple[str, str, str]] = SITES,
    images: int = 6,
    seed: int = 0,
    statistics: str = "builder",
    gallery_axes: Sequence[str] | None = None,
) -> Path:
    """Write a complete synthetic run folder (see the module docstring) and return it.

    ``images`` distinct NIfTI triplets are written under ``<run>/cohort``; cases reuse them in turn (0: none).
    ``statistics="analyze"`` fills results.json's statistics with the real ``audit.stats.analyze`` output
    (200 resamples) instead of the builder's simple tables. ``gallery_axes`` sets ``report.gallery_axes``.
    """
    if statistics not in ("builder", "analyze"):
        raise ValueError(f"statistics: allowed values are ['builder', 'analyze']; found {statistics!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    protocol = protocol_to_dict(load_protocol(REPO / "protocols" / "demo.yaml"))
    protocol["metrics"]["names"], protocol["metrics"]["nsd_tolerances_mm"] = ["dice", "hd95"], [2.0]
    protocol["subgroups"].update(columns=list(AXES), intersections=[list(INTERSECTION)], age_bands=[18, 40, 60, 120])
    protocol["report"]["title"] = "Synthetic report <b>test</b>"
    protocol["report"]["worst_cases_per_group"] = 2
    if gallery_axes is not None:
        protocol["report"]["gallery_axes"] = list(gallery_axes)
    protocol = protocol_to_dict(protocol_from_dict(protocol))  # the canonical form, as a run writes it
    (run_dir / "protocol.yaml").write_text(yaml.safe_dump(protocol, sort_keys=False), encoding="utf-8")
    manifest = _manifest(n_cases, sites, rng)
    triplets = [write_case_files(run_dir / "cohort", f"img{k}", shift=k % 3 + 1, seed=k) for k in range(images)]
    for column, j in (("image_path", 0), ("label_path", 1), ("prediction_path", 2)):
        manifest[column] = [triplets[i % images][j] if images else "" for i in range(n_cases)]
    manifest.loc[FAILED_CASE_INDEX, "prediction_path"] = None
    metrics = _metrics(manifest, rng)
    failed = manifest.iloc[FAILED_CASE_INDEX]
    failures = [{"case_id": failed["case_id"], "site": failed["site"], "stage": "harmonize", "error_type": "ValueError", "error": f"corrupt image {LEAKY_DIR}/img.nii.gz"}]
    manifest.drop(columns=["age_band"]).to_csv(run_dir / "manifest.csv", index=False)
    metrics.to_csv(run_dir / "metrics.csv", index=False)
    pd.DataFrame(failures).to_csv(run_dir / "failures.csv", index=False)
    table = metrics.merge(manifest, on="case_id")
    stats = _statistics(table) if statistics == "builder" else analyze_statistics(table, protocol)
    table1 = []
    for axis in ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band"):
        for group, sub in manifest.groupby(axis, sort=True):
            table1.append({"axis": axis, "group": str(group), "n_cases": len(sub), "n_patients": int(sub["patient_id"].nunique()),
                           "percent": 100.0 * len(sub) / n_cases})  # fmt: skip
    completeness = [{"site": site, "column": c, "known": int((sub[c].astype(str) != "Unknown").sum()), "unknown": int((sub[c].astype(str) == "Unknown").sum())}
                    for site, sub in manifest.groupby("site") for c in ("vendor", "field_strength", "sex", "race", "ethnicity")]  # fmt: skip
    write_tables(run_dir, {name: pd.DataFrame(stats[name]) for name in ("overall", "group_estimates", "gaps", "equivalence", "power", "adjusted", "acceptance")}
                 | {"table1": pd.DataFrame(table1)})  # fmt: skip
    results = {
        "schema_version": "1.0",
        "tool": {"name": "spine-audit", "version": "0.1.0", "python": "3.11.7", "packages": {"numpy": np.__version__, "pandas": pd.__version__}},
        "run": {"started": "2026-11-24T10:00:00+00:00", "finished": "2026-11-24T10:01:02+00:00", "duration_s": 62.345,
                "command": "spine-audit run protocols/demo.yaml --out <run>", "host_cpu_count": 2},
        "protocol": protocol, "protocol_sha256": canonical_sha256(protocol),
        "model": {"name": "demo <model>", "kind": "checkpoint", "sha256": "b" * 64, "labels": {str(i + 1): s for i, s in enumerate(STRUCTURES)}, "device": "cpu"},
        "data": {"manifest_sha256": manifest_sha256(pd.read_csv(run_dir / "manifest.csv", dtype=str, keep_default_na=False)), "n_cases": n_cases, "n_patients": int(manifest["patient_id"].nunique()), "n_sites": len(sites),
                 "n_failed_cases": 1, "synthetic": True, "synthetic_columns": ["sex", "race", "ethnicity", "age_years"]},
        "study": {
            "description": "Synthetic study <i>description</i>", "intended_use": "Segmenting <b>spines</b> for tests", "reference_standard": None,
            "registered": "2026-11-20", "registry": None,
            "model_card": {"description": None, "intended_use": None, "limitations": None, "license": None,
                           "training": {"sites": list(TRAINING_SITES), "case_ids": [], "patient_ids": [], "dates": None, "date": None, "n_cases": 10,
                                        "n_patients": None, "data": None}},
            "overlap": {"training_sites_known": True, "audited_sites": [s[0] for s in sites], "training_sites": list(TRAINING_SITES),
                        "external_sites": sorted({s[0] for s in sites} - set(TRAINING_SITES)),
                        "overlapping_sites": sorted({s[0] for s in sites} & set(TRAINING_SITES)), "unverified_sites": [],
                        "case_ids_checked": True, "overlapping_case_ids": 0, "patient_ids_checked": False, "overlapping_patient_ids": None},
        },
        "cohort": {"table1": table1, "flow": flow_records(manifest, metrics, failures)},
        "metrics": {"names": list(METRICS), "structures": list(STRUCTURES), "empty_policy": {"missed_distance": "diagonal"},
                    "definitions": {m: {"description": f"{m} (test definition)", "higher_is_better": HIGHER[m], "unit": "" if HIGHER[m] else "mm"} for m in METRICS},
                    "detection": [{"structure": s, "status": "ok", "n": n_cases - 1} for s in STRUCTURES]},
        "statistics": stats,
        "failures": failures,
        "harmonization": {"warnings": [{"site": sites[0][0], "warning": "vendor 'ACME <Scanner>' not in vocabulary; mapped to Other", "n_cases": 2}],
                          "metadata_completeness": completeness},
        "warnings": ["1 case(s) failed and are listed under data quality; they are counted, not dropped", *stats["warnings"]],
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False), encoding="utf-8")
    return run_dir
