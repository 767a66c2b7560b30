"""The six stages of an audit: sites, checks, inference, metrics, stats, report.

Each stage is a short function of a :class:`StageContext` that reads its inputs from the
:class:`~audit.runfolder.RunFolder` and writes its outputs there, so a run can stop after any stage, restart from
any stage whose inputs the folder holds, and the report can be re-rendered from the folder alone.
:func:`audit.pipeline.run_audit` runs them in order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import UserError
from audit import study
from audit.evaluate import EvaluationSettings, metric_names, not_annotated
from audit.execution import Executor, map_cases, open_executor
from audit.harmonize.privacy import scrub_case_paths
from audit.metric_cache import evaluate_case_cached
from audit.metrics import EmptyPolicy, metric_spec
from audit.protocol import Protocol, validate_against_manifest
from audit.records import MANIFEST_COLUMNS, CaseFailure, failed_case_rows
from audit.results import results_document
from audit.runfolder import STAGES, RunFolder
from audit.sites import resolve_sites

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "STAGE_FUNCTIONS", "SiteSelectionError", "ProgressCallback", "StageContext", "prepare_cohort", "metric_directions", "model_identity", "failed_case_ids", "no_progress"]

#: ``progress(stage, done, total)``; the CLI draws bars from it.
ProgressCallback = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""
    return None


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage function gets: the protocol, the run folder and the execution settings."""

    protocol: Protocol
    folder: RunFolder
    device: str = "auto"
    workers: int = 1
    progress: ProgressCallback = no_progress
    #: Where checks, inference and metrics run (``None``: a local executor per stage from ``workers``).
    executor: Executor | None = None
    #: Run only these sites of the protocol (a federated site's own part); empty: every site.
    only_sites: tuple[str, ...] = ()
    command: str | None = None
    started: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


# ---- helpers ---------------------------------------------------------------------------------------
def _cohort_settings(protocol: Protocol) -> dict[str, Any] | None:
    settings = protocol.synthetic_cohort
    return None if settings is None else json.loads(json.dumps(dataclasses.asdict(settings), default=str))


def prepare_cohort(protocol: Protocol, folder: RunFolder, *, workers: int = 1) -> Path | None:
    """Generate the protocol's synthetic cohort into the folder (reused when complete and generated with the
    same settings; regenerated when the protocol's ``synthetic_cohort`` changed)."""
    settings = protocol.synthetic_cohort
    if settings is None:
        return None
    from audit.synthetic.cohort import generate_protocol_cohort

    cohort_dir = folder.cohort_dir
    if (cohort_dir / "cohort.json").is_file():
        previous = folder.state().get("cohort")
        if previous is None or previous == _cohort_settings(protocol):
            logger.info("reusing synthetic cohort in %s", cohort_dir)
            return cohort_dir
        logger.warning("synthetic_cohort changed since the cohort in %s was generated: regenerating it", cohort_dir)
        shutil.rmtree(cohort_dir)
    return generate_protocol_cohort(settings, cohort_dir, workers=workers)


def _site_configs(ctx: StageContext) -> dict[str, Any]:
    cohort_dir = ctx.folder.cohort_dir if ctx.protocol.synthetic_cohort is not None else None
    return {c.name: c for c in resolve_sites(ctx.protocol, cohort_dir)}


def _site_label_maps(ctx: StageContext) -> dict[str, Any]:
    return {name: c.label_map for name, c in _site_configs(ctx).items()}


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


def _evaluation_settings(protocol: Protocol) -> EvaluationSettings:
    names = metric_names(protocol.metrics.names, protocol.metrics.nsd_tolerances_mm)
    return EvaluationSettings(
        structures=protocol.structures,
        metrics=names,
        empty_policy=EmptyPolicy(missed_distance=protocol.metrics.missed_distance),
        limits=protocol.limits,
    )


def metric_directions(protocol: Protocol, names: Sequence[str]) -> dict[str, bool]:
    """``higher_is_better`` per metric: the registry's, or (``input: metrics``) the protocol's declared one."""
    if protocol.input != "metrics":
        return {m: metric_spec(m).higher_is_better for m in names}
    from audit.tables_input import metric_directions as declared_directions, parse_metric_input

    return declared_directions(names, parse_metric_input(protocol.metric_input, base_dir=protocol.base_dir).declared_metrics)


class SiteSelectionError(UserError, ValueError):
    """``--site`` names a site the protocol does not have."""


def _selected(configs: list[Any], only: Sequence[str]) -> list[Any]:
    """The site configs named in ``only`` (all when empty); an unknown name is an error listing the sites."""
    if not only:
        return configs
    names = [c.name for c in configs]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise SiteSelectionError(f"--site: the protocol's sites are {names}; found {unknown}")
    return [c for c in configs if c.name in only]


def _write_failures(ctx: StageContext, stage: str, failures: Sequence[CaseFailure], manifest: pd.DataFrame) -> None:
    """Record a stage's failures, file paths of pseudonymizing sites' cases replaced by ``<case_id role>``."""
    hidden = [name for name, c in _site_configs(ctx).items() if c.option("pseudonymize", False)]
    scrubbed, _ = scrub_case_paths(failures, pd.DataFrame(), manifest, hidden)
    ctx.folder.write_failures(stage, scrubbed)


def failed_case_ids(failures: Sequence[CaseFailure]) -> set[str]:
    """The ids of the cases with a failure (a case may fail in several stages)."""
    return {f.case_id for f in failures}


# ---- stages ----------------------------------------------------------------------------------------
def stage_sites(ctx: StageContext) -> dict[str, Any]:
    """Read every site into ``manifest.csv``; a case that fails in its adapter keeps a row and a failure."""
    from audit.sites import build_manifest

    ctx.progress("sites", 0, 1)
    if ctx.protocol.input == "metrics":
        from audit.tables_input.stage import stage_metric_tables

        extra = stage_metric_tables(ctx.protocol, ctx.folder)
        ctx.progress("sites", 1, 1)
        return extra
    configs = _selected(resolve_sites(ctx.protocol, prepare_cohort(ctx.protocol, ctx.folder, workers=ctx.workers)), ctx.only_sites)
    manifest, failures = build_manifest(configs)
    orphan = [f for f in failures if f.case_id not in set(manifest["case_id"])]
    if orphan:
        extra = _failed_manifest_rows(orphan, manifest)
        renamed = {id(f): cid for f, cid in zip(orphan, extra["case_id"])}
        failures = [dataclasses.replace(f, case_id=renamed.get(id(f), f.case_id)) for f in failures]
        manifest = pd.concat([manifest, extra], ignore_index=True)
    ctx.folder.write_manifest(manifest)
    _write_failures(ctx, "sites", failures, manifest)
    ctx.progress("sites", 1, 1)
    logger.info("manifest: %d cases from %d sites, %d adapter failures", len(manifest), len(configs), len(failures))
    return {"cohort": _cohort_settings(ctx.protocol)}


def stage_checks(ctx: StageContext) -> None:
    """Voxel-level checks (corrupt files, image/label geometry, unknown label values) of each readable case."""
    from audit.harmonize.checks import check_case

    manifest, failed = ctx.folder.read_manifest(), failed_case_ids(ctx.folder.read_failures(before="checks"))
    validate_against_manifest(ctx.protocol, manifest)  # subgroup columns and groups exist: after sites, before inference
    if ctx.protocol.input == "metrics":
        return None  # no images to check
    site_maps = _site_label_maps(ctx)
    expect_hu = _model_expects_hounsfield(ctx.protocol)
    failures: list[CaseFailure] = []
    warnings: list[tuple[str, str, str]] = []
    rows = [r for r in manifest.itertuples(index=False) if r.case_id not in failed]
    jobs = (((r.case_id, r.image_path, r.label_path, site_maps[r.site]), {"site": r.site, "limits": ctx.protocol.limits,
                                                                          "expect_hounsfield": expect_hu}) for r in rows)  # fmt: skip
    for i, (r, check) in enumerate(zip(rows, map_cases(check_case, jobs, workers=ctx.workers, executor=ctx.executor))):
        failures.extend(check.failures)
        warnings.extend((r.case_id, r.site, w) for w in check.warnings)
        ctx.progress("checks", i + 1, len(rows))
    _write_failures(ctx, "checks", failures, manifest)
    ctx.folder.write_image_warnings(warnings)
    return None


def _model_expects_hounsfield(protocol: Protocol) -> bool:
    """Whether the model maps fixed HU ranges (its images are then checked for Hounsfield units)."""
    from audit.inference import model_spec_from_dict

    spec = model_spec_from_dict(protocol.model, base_dir=Path(protocol.base_dir))
    return spec.preprocessing.intensity.expects_hounsfield


def model_identity(model: Any) -> dict[str, Any]:
    """What results.json and later stages need to know about a loaded model (``model.json``)."""
    label_map = model.label_map
    return {
        "name": model.spec.name,
        "kind": model.spec.kind,
        "sha256": model.sha256,
        "labels": {str(k): v for k, v in label_map.values.items()},
        "ignore": sorted(int(v) for v in label_map.ignore),
        "label_map_name": label_map.name,
        "device": str(model.device),
    }


def stage_inference(ctx: StageContext) -> None:
    """Segment every case without an earlier failure; prediction paths go into the manifest."""
    from audit.execution.inference import run_inference_on
    from audit.inference import InferenceCase, InferenceResult, load_model, model_spec_from_dict

    if ctx.protocol.input == "metrics":
        return None
    manifest, failed = ctx.folder.read_manifest(), failed_case_ids(ctx.folder.read_failures(before="inference"))
    model = load_model(model_spec_from_dict(ctx.protocol.model, base_dir=Path(ctx.protocol.base_dir)), device=ctx.device)
    cases = [
        InferenceCase(case_id=r.case_id, image_path=r.image_path, label_path=r.label_path, site=r.site)
        for r in manifest.itertuples(index=False)
        if r.case_id not in failed
    ]
    predictions: dict[str, str] = {}
    failures: list[CaseFailure] = []
    progress = ctx.progress
    inference = run_inference_on(
        ctx.executor or open_executor(workers=1), model, cases, cache_dir=ctx.folder.predictions_dir, device=ctx.device, workers=ctx.workers,
        progress=lambda d, t: progress("inference", d, t), limits=ctx.protocol.limits,
    )
    for result in inference:
        if isinstance(result, InferenceResult):
            predictions[result.case_id] = str(result.prediction_path)
        else:
            failures.append(result)
    manifest["prediction_path"] = manifest["case_id"].map(predictions)
    ctx.folder.write_manifest(manifest)
    ctx.folder.write_model(model_identity(model))
    _write_failures(ctx, "inference", failures, manifest)


def stage_metrics(ctx: StageContext) -> None:
    """Score every case with a prediction (cached by input hashes); failed cases get ``failed`` rows."""
    from audit.harmonize.labels import resolve_label_map

    if ctx.protocol.input == "metrics":
        return None
    folder = ctx.folder
    manifest, earlier = folder.read_manifest(), folder.read_failures(before="metrics")
    identity = folder.read_model()
    prediction_map = resolve_label_map({"values": identity["labels"], "ignore": identity.get("ignore", [])}, name=identity.get("label_map_name", "model"))
    settings = _evaluation_settings(ctx.protocol)
    configs = _site_configs(ctx)
    site_maps = {name: c.label_map for name, c in configs.items()}
    annotates = {name: c.annotated_structures for name, c in configs.items()}

    def skipped(site: str) -> tuple[str, ...]:  # structures the site does not annotate: not_assessed, never failed
        return not_annotated(settings.structures, annotates.get(site))

    errors: dict[str, list[str]] = {}
    for f in earlier:
        errors.setdefault(f.case_id, []).append(f.error)
    failures: list[CaseFailure] = []
    evaluable = []
    for r in manifest.itertuples(index=False):
        if r.case_id not in errors and not isinstance(r.prediction_path, str):
            failures.append(CaseFailure(case_id=r.case_id, stage="inference", error="no prediction", error_type="MissingPrediction", site=r.site))
            errors[r.case_id] = ["no prediction"]
        elif r.case_id not in errors:
            evaluable.append(r)
    jobs = (
        ((r.case_id,), dict(cache_dir=folder.metric_cache_dir, label_path=r.label_path, prediction_path=r.prediction_path,
                            reference_map=site_maps[r.site], prediction_map=prediction_map, settings=settings, site=r.site,
                            annotated=annotates[r.site]))
        for r in evaluable
    )  # fmt: skip
    evaluate: Any = evaluate_case_cached
    vertebra_rows: list[pd.DataFrame | CaseFailure] = []
    if ctx.protocol.vertebrae is not None:  # metric rows and per-vertebra rows from one read of each label pair (issue #15)
        from audit.vertebra_eval import evaluate_case_and_vertebrae

        evaluate = evaluate_case_and_vertebrae
        centroids = {c: p for c, p in zip(manifest["case_id"], manifest.get("centroids_path", pd.Series(dtype=object))) if isinstance(p, str) and p}
        jobs = ((a, {**{k: v for k, v in kw.items() if k != "cache_dir"}, "vertebrae": ctx.protocol.vertebrae,
                     "centroids_path": centroids.get(a[0])}) for a, kw in jobs)
    scored: dict[str, pd.DataFrame] = {}
    for i, (r, result) in enumerate(zip(evaluable, map_cases(evaluate, jobs, workers=ctx.workers, executor=ctx.executor))):
        if isinstance(result, tuple):
            result, rows_of_case = result
            if rows_of_case is not None:
                vertebra_rows.append(rows_of_case)
        if isinstance(result, CaseFailure):
            failures.append(result)
            errors[r.case_id] = [result.error]
        else:
            scored[r.case_id] = result
        ctx.progress("metrics", i + 1, len(evaluable))
    frames = [
        scored[cid] if cid in scored else failed_case_rows(cid, settings.structures, settings.metrics, "; ".join(errors[cid]), not_assessed=skipped(site))
        for cid, site in zip(manifest["case_id"], manifest["site"])
    ]
    if ctx.protocol.vertebrae is not None:  # vertebrae.csv, vertebrae.json (issue #15)
        from audit.vertebra_eval import write_vertebra_outputs

        vertebra_failures = [f for f in vertebra_rows if isinstance(f, CaseFailure)]
        failures.extend(vertebra_failures)
        write_vertebra_outputs(folder, [t for t in vertebra_rows if isinstance(t, pd.DataFrame)], vertebra_failures, manifest,
                               ctx.protocol.vertebrae)
    hidden = [name for name, c in configs.items() if c.option("pseudonymize", False)]
    failures, metric_table = scrub_case_paths(failures, pd.concat(frames, ignore_index=True), manifest, hidden)
    folder.write_metrics(metric_table)
    folder.write_failures("metrics", failures)


def stage_stats(ctx: StageContext) -> None:
    """Statistics of the metric table joined with the manifest; writes results.json and tables/."""
    from audit import provenance, stats

    protocol, folder = ctx.protocol, ctx.folder
    ctx.progress("stats", 0, 1)
    manifest, metric_table, failures = folder.read_manifest(), folder.read_metrics(), folder.read_failures()
    names = _evaluation_settings(protocol).metrics
    manifest_banded = stats.add_age_band(manifest, protocol.subgroups.age_bands)
    manifest_banded, subgroups = study.with_site_role(manifest_banded, protocol.subgroups, protocol.model)  # external vs training sites
    analysis = metric_table.merge(manifest_banded, on="case_id", how="left", validate="many_to_one")
    results = stats.analyze(
        analysis,
        structures=protocol.structures,
        metrics=names,
        subgroups=subgroups,
        pre_registered_axes=protocol.subgroups.columns,
        statistics=protocol.statistics,
        acceptance=protocol.acceptance,
        higher_is_better=metric_directions(protocol, names),
        failure_interval=protocol.statistics.failure_interval,
    )
    table1 = provenance.cohort_table(manifest_banded, provenance.TABLE1_AXES)
    document = results_document(
        protocol=protocol, model=folder.read_model(), manifest=manifest, metric_table=metric_table, names=names, results=results,
        table1=table1, failures=failures, started=ctx.started, finished=dt.datetime.now(dt.timezone.utc), command=ctx.command,
        image_warnings=folder.read_image_warnings(),
    )  # fmt: skip
    tables = {name: getattr(results, name) for name in ("overall", "group_estimates", "gaps", "equivalence", "power", "adjusted", "acceptance", "new_site")}
    folder.write_tables({**tables, "table1": table1})
    if protocol.vertebrae is not None:  # per-vertebra VerSe summaries (issue #15; report section "Per-vertebra evaluation")
        from audit.runfolder import VERTEBRAE_SUMMARY

        document["vertebrae"] = json.loads(folder.path(VERTEBRAE_SUMMARY).read_text(encoding="utf-8"))
    folder.write_results(document)
    ctx.progress("stats", 1, 1)


def stage_report(ctx: StageContext) -> None:
    """Render report.html from the folder."""
    from audit.report import render_report

    ctx.progress("report", 0, 1)
    render_report(ctx.folder.root)
    ctx.progress("report", 1, 1)


#: The stage functions, in :data:`~audit.runfolder.STAGES` order.
STAGE_FUNCTIONS: Mapping[str, Callable[[StageContext], Any]] = {
    "sites": stage_sites,
    "checks": stage_checks,
    "inference": stage_inference,
    "metrics": stage_metrics,
    "stats": stage_stats,
    "report": stage_report,
}
