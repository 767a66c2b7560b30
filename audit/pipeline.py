"""The audit pipeline: protocol -> sites -> inference -> metrics -> stats -> report.

Each stage writes a table or file into the run folder (see docs/architecture in the README), so a run can
stop after any stage (``until``) and the report can be re-rendered from the folder alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from audit import provenance, study
from audit.evaluate import EvaluationSettings, evaluate_case, metric_names
from audit.execution import map_cases
from audit.metrics import EmptyPolicy, metric_spec
from audit.protocol import Protocol, protocol_to_dict
from audit.results import results_document
from audit.records import (
    MANIFEST_COLUMNS,
    CaseFailure,
    failed_case_rows,
    failure_table,
    validate_manifest,
    validate_metric_table,
)

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "RunSummary", "ProgressCallback", "run_audit", "resolve_sites", "prepare_cohort"]

STAGES = ("sites", "inference", "metrics", "stats", "report")

#: ``progress(stage, done, total)``; the CLI draws bars from it.
ProgressCallback = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Where a run wrote its outputs and the headline counts."""

    run_dir: Path
    report_path: Path | None
    results_path: Path | None
    n_cases: int
    n_failed: int
    duration_s: float
    acceptance: tuple[tuple[str, str], ...] = ()


def _noop(stage: str, done: int, total: int) -> None:
    return None


def prepare_cohort(protocol: Protocol, run_dir: Path) -> Path | None:
    """Generate the protocol's synthetic cohort into ``<run>/cohort`` (reused when already complete)."""
    settings = protocol.synthetic_cohort
    if settings is None:
        return None
    from audit import synthetic

    cohort_dir = run_dir / "cohort"
    marker = cohort_dir / "cohort.json"
    if marker.is_file():
        logger.info("reusing synthetic cohort in %s", cohort_dir)
        return cohort_dir
    planted = synthetic.PlantedEffects(hard_site=settings.hard_site, age_effect=settings.age_effect)
    sites = synthetic.null_sites() if settings.null_sites else synthetic.DEFAULT_SITES
    synthetic.generate_cohort(
        cohort_dir, n_cases=settings.n_cases, seed=settings.seed, sites=sites, planted=planted, repeat_fraction=settings.repeat_fraction
    )
    return cohort_dir


def resolve_sites(protocol: Protocol, cohort_dir: Path | None) -> list[Any]:
    """Site configs of the protocol (inline or by path), or every generated site of the synthetic cohort."""
    from audit.sites import load_site_config

    base = Path(protocol.base_dir)
    if not protocol.sites:
        if cohort_dir is None:
            raise ValueError("sites: the protocol lists no sites and has no synthetic_cohort section")
        return [load_site_config(p, cohort_dir=cohort_dir) for p in sorted((cohort_dir / "sites").glob("*.yaml"))]
    configs = []
    for entry in protocol.sites:
        if "config" in entry:
            path = Path(os.path.expandvars(str(entry["config"])).replace("{cohort}", str(cohort_dir or "")))
            configs.append(load_site_config(path if path.is_absolute() else base / path, cohort_dir=cohort_dir))
        else:
            configs.append(load_site_config(dict(entry), base_dir=base, cohort_dir=cohort_dir))
    return configs


def _failed_manifest_rows(failures: Sequence[CaseFailure], manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows (metadata Unknown) for cases that failed before they had one, so they stay counted."""
    known = set(manifest["case_id"])
    rows = []
    for f in failures:
        case_id, n = f.case_id, 1
        while case_id in known:  # duplicate ids fail at every occurrence: keep each one, numbered
            n += 1
            case_id = f"{f.case_id}#{n}"
        known.add(case_id)
        row = {c: "Unknown" for c in MANIFEST_COLUMNS}
        row.update(case_id=case_id, site=f.site, patient_id=f"unknown:{case_id}", image_path="", label_path="", prediction_path=None)
        row.update(field_strength_t=float("nan"), age_years=float("nan"))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def run_audit(
    protocol: Protocol,
    *,
    run_dir: Path,
    device: str = "auto",
    workers: int = 1,
    until: str = "report",
    progress: ProgressCallback | None = None,
    command: str | None = None,
) -> RunSummary:
    """Run the whole audit (or the stages up to ``until``) and write everything into ``run_dir``.

    Parameters
    ----------
    protocol : Protocol
        The validated protocol.
    run_dir : pathlib.Path
        Output folder (created). Re-running into the same folder reuses the cohort and cached predictions.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    workers : int
        Parallel workers for data loading and per-case metrics.
    until : {"sites", "inference", "metrics", "stats", "report"}
        Last stage to run.
    progress : callable, optional
        ``progress(stage, done, total)``.
    command : str, optional
        The command line recorded in the provenance (defaults to ``sys.argv``).
    """
    if until not in STAGES:
        raise ValueError(f"until: allowed values are {list(STAGES)}; found {until!r}")
    progress = progress or _noop
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "protocol.yaml").write_text(yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False), encoding="utf-8")

    # ---- sites -------------------------------------------------------------------------------
    from audit.sites import build_manifest

    progress("sites", 0, 1)
    cohort_dir = prepare_cohort(protocol, run_dir)
    configs = resolve_sites(protocol, cohort_dir)
    manifest, failures = build_manifest(configs)
    failures = list(failures)
    manifest = validate_manifest(manifest)
    manifest.to_csv(run_dir / "manifest.csv", index=False)
    progress("sites", 1, 1)
    logger.info("manifest: %d cases from %d sites, %d adapter failures", len(manifest), len(configs), len(failures))
    if until == "sites":
        return _summary(run_dir, None, None, manifest, failures, t0)

    # ---- harmonize checks: corrupt files, image/label geometry, unknown label values ----------
    from audit.harmonize.checks import check_case

    checked_out: set[str] = set()
    site_maps = {c.name: c.label_map for c in configs}
    for i, r in enumerate(manifest.itertuples(index=False)):
        check = check_case(r.case_id, r.image_path, r.label_path, site_maps[r.site], site=r.site)
        if check.failures:
            failures.extend(check.failures)
            checked_out.add(r.case_id)
        progress("checks", i + 1, len(manifest))

    # ---- inference ---------------------------------------------------------------------------
    from audit.inference import InferenceCase, InferenceResult, load_model, model_spec_from_dict, run_inference

    spec = model_spec_from_dict(protocol.model, base_dir=Path(protocol.base_dir))
    model = load_model(spec, device=device)
    cases = [
        InferenceCase(
            case_id=r.case_id,
            image_path=r.image_path,
            label_path=r.label_path,
            site=r.site,
            prediction_path=r.prediction_path if isinstance(r.prediction_path, str) and r.prediction_path else None,
        )
        for r in manifest.itertuples(index=False)
        if r.case_id not in checked_out
    ]
    predictions: dict[str, str] = {}
    for result in run_inference(
        model, cases, cache_dir=run_dir / "predictions", workers=workers, progress=lambda d, t: progress("inference", d, t)
    ):
        if isinstance(result, InferenceResult):
            predictions[result.case_id] = str(result.prediction_path)
        else:
            failures.append(result)
    manifest["prediction_path"] = manifest["case_id"].map(predictions)
    manifest.to_csv(run_dir / "manifest.csv", index=False)
    if until == "inference":
        return _summary(run_dir, None, None, manifest, failures, t0)

    # ---- metrics -----------------------------------------------------------------------------
    names = metric_names(protocol.metrics.names, protocol.metrics.nsd_tolerances_mm)
    settings = EvaluationSettings(
        structures=protocol.structures, metrics=names, empty_policy=EmptyPolicy(missed_distance=protocol.metrics.missed_distance)
    )
    frames: list[pd.DataFrame] = []
    failed_ids = {f.case_id for f in failures}
    rows = list(manifest.itertuples(index=False))
    evaluable = [r for r in rows if r.case_id not in failed_ids and r.case_id in predictions]
    jobs = (
        (
            (r.case_id,),
            dict(
                label_path=r.label_path,
                prediction_path=predictions[r.case_id],
                reference_map=site_maps[r.site],
                prediction_map=model.label_map,
                settings=settings,
                site=r.site,
            ),
        )
        for r in evaluable
    )
    evaluated: dict[str, pd.DataFrame | CaseFailure] = {}
    for i, (r, result) in enumerate(zip(evaluable, map_cases(evaluate_case, jobs, workers=workers))):
        evaluated[r.case_id] = result
        progress("metrics", i + 1, len(evaluable))
    for row in rows:
        out = evaluated.get(row.case_id)
        if out is None:
            error = "; ".join(f.error for f in failures if f.case_id == row.case_id) or "no prediction"
            if row.case_id not in failed_ids:
                failures.append(CaseFailure(case_id=row.case_id, stage="inference", error=error, error_type="MissingPrediction", site=row.site))
            out = failed_case_rows(row.case_id, settings.structures, names, error)
        elif isinstance(out, CaseFailure):
            failures.append(out)
            out = failed_case_rows(row.case_id, settings.structures, names, out.error)
        frames.append(out)
    # cases that failed before they had a manifest row stay visible as failed rows with Unknown metadata
    orphan = [f for f in failures if f.case_id not in set(manifest["case_id"])]
    if orphan:
        extra = _failed_manifest_rows(orphan, manifest)
        manifest = pd.concat([manifest, extra], ignore_index=True)
        for f, cid in zip(orphan, extra["case_id"]):
            frames.append(failed_case_rows(cid, settings.structures, names, f.error))
    metric_table = validate_metric_table(pd.concat(frames, ignore_index=True))
    metric_table.to_csv(run_dir / "metrics.csv", index=False)
    manifest.to_csv(run_dir / "manifest.csv", index=False)
    failure_table(failures).to_csv(run_dir / "failures.csv", index=False)
    if until == "metrics":
        return _summary(run_dir, None, None, manifest, failures, t0)

    # ---- statistics --------------------------------------------------------------------------
    from audit import stats

    progress("stats", 0, 1)
    manifest_banded = stats.add_age_band(manifest, protocol.subgroups.age_bands)
    manifest_banded, subgroups = study.with_site_role(manifest_banded, protocol.subgroups, protocol.model)  # external vs training sites
    analysis = metric_table.merge(manifest_banded, on="case_id", how="left", validate="many_to_one")
    higher = {m: metric_spec(m).higher_is_better for m in names}
    results = stats.analyze(
        analysis,
        structures=protocol.structures,
        metrics=names,
        subgroups=subgroups,
        pre_registered_axes=protocol.subgroups.columns,
        statistics=protocol.statistics,
        acceptance=protocol.acceptance,
        higher_is_better=higher,
        failure_interval=protocol.statistics.failure_interval,
    )
    progress("stats", 1, 1)
    table1 = provenance.cohort_table(manifest_banded, ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band"))
    finished = dt.datetime.now(dt.timezone.utc)
    document = results_document(
        protocol=protocol,
        model=model,
        manifest=manifest,
        metric_table=metric_table,
        names=names,
        results=results,
        table1=table1,
        failures=failures,
        started=started,
        finished=finished,
        command=command,
    )
    from audit.report import write_tables

    write_tables(
        run_dir,
        {
            "overall": results.overall,
            "group_estimates": results.group_estimates,
            "gaps": results.gaps,
            "equivalence": results.equivalence,
            "power": results.power,
            "adjusted": results.adjusted,
            "acceptance": results.acceptance,
            "table1": table1,
        },
    )
    results_path = run_dir / "results.json"
    results_path.write_text(provenance.dumps(document), encoding="utf-8")
    if until == "stats":
        return _summary(run_dir, None, results_path, manifest, failures, t0, results.acceptance)

    # ---- report ------------------------------------------------------------------------------
    from audit.report import render_report

    progress("report", 0, 1)
    report_path = render_report(run_dir)
    progress("report", 1, 1)
    return _summary(run_dir, report_path, results_path, manifest, failures, t0, results.acceptance)


def _summary(
    run_dir: Path,
    report: Path | None,
    results_path: Path | None,
    manifest: pd.DataFrame,
    failures: Sequence[CaseFailure],
    t0: float,
    acceptance: pd.DataFrame | None = None,
) -> RunSummary:
    decided: tuple[tuple[str, str], ...] = ()
    if acceptance is not None and len(acceptance):
        worst = {"fail": 2, "inconclusive": 1, "pass": 0}
        by_id: dict[str, str] = {}
        for rec in acceptance.itertuples(index=False):
            if rec.id not in by_id or worst[rec.status] > worst[by_id[rec.id]]:
                by_id[rec.id] = rec.status
        decided = tuple(by_id.items())
    return RunSummary(
        run_dir=run_dir,
        report_path=report,
        results_path=results_path,
        n_cases=int(len(manifest)),
        n_failed=len({f.case_id for f in failures}),
        duration_s=time.perf_counter() - t0,
        acceptance=decided,
    )

