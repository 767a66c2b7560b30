"""Command-line interface: ``spine-audit run | merge | demo | sites check | report | package | verify | compare``.

This module holds the commands that run audits (``run``, ``merge``, ``demo``, ``sites check``);
:mod:`audit.cli_review` the reviewer's commands; :mod:`audit.cli_common` the apps, the console, the help texts and
the one error boundary every command is wrapped in (exit statuses 0, 1, 2 and 3 are defined there).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from audit.cli_common import (
    DEBUG_HELP, DEVICE_HELP, FAIL_HELP, JUDGED_STAGES, QUIET_HELP, STAGE_LABELS, VERBOSE_HELP, app, console, default_run_dir, error_boundary,
    missing_folders, remove_if_empty, setup_logging, sites_app,
)  # fmt: skip
from audit.cli_review import compare, package, report, verify
from audit.errors import EXIT_CRITERIA, EXIT_PROBLEMS, UserError

__all__ = ["app", "compare", "demo", "demo_protocol_path", "main", "merge", "package", "report", "run", "sites_check", "verify"]


def _run(
    protocol, run_dir: Path, device: str, workers: int, until: str, quiet: bool, fail_on_criteria: bool, from_stage: str = "sites",
    sites: tuple[str, ...] = (),
) -> None:
    """Run the pipeline with progress bars, print the summary, and exit 3 on unmet criteria when asked."""
    from audit.pipeline import STAGES, run_audit

    for option, value in (("--until", until), ("--from", from_stage)):
        if value not in STAGES:
            raise UserError(f"{option}: allowed values are {list(STAGES)}; found {value!r}")
    if workers < 1:
        raise UserError(f"--workers: must be at least 1; found {workers}")
    if fail_on_criteria and until not in JUDGED_STAGES:
        raise UserError(f"--fail-on-criteria: the criteria are judged in the stats stage; use --until stats or report, not {until!r}")
    command = "spine-audit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    created = missing_folders(run_dir)
    try:
        with Progress(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=quiet, transient=False
        ) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(STAGE_LABELS.get(stage, stage), total=max(total, 1))
                bar.update(tasks[stage], completed=done, total=max(total, 1))

            summary = run_audit(
                protocol, run_dir=run_dir, device=device, workers=workers, until=until, from_stage=from_stage, progress=progress, command=command,
                sites=sites,
            )
    except BaseException:
        remove_if_empty(created)  # no empty run folder left behind
        raise
    console.print(f"[bold]Run folder:[/bold] {summary.run_dir}")
    console.print(f"Cases: {summary.n_cases}   failed: {summary.n_failed}   time: {summary.duration_s:.1f} s")
    if summary.acceptance:
        table = Table(title="Acceptance criteria")
        table.add_column("criterion")
        table.add_column("result")
        for cid, status in summary.acceptance:
            colour = {"pass": "green", "fail": "red"}.get(status, "yellow")
            table.add_row(cid, f"[{colour}]{status.upper()}[/{colour}]")
        console.print(table)
    if summary.results_path:
        console.print(f"[bold]Results:[/bold] {summary.results_path}")
    if summary.report_path:
        console.print(f"[bold]Report:[/bold]  {summary.report_path}")
    not_passed = [f"{cid} {status}" for cid, status in summary.acceptance if status != "pass"]
    if fail_on_criteria and not_passed:
        typer.echo(f"Acceptance criteria not met: {', '.join(not_passed)} (exit status {EXIT_CRITERIA}, --fail-on-criteria)", err=True)
        raise typer.Exit(EXIT_CRITERIA)


@app.command()
@error_boundary
def run(
    protocol: Path = typer.Argument(..., help="Protocol YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default reports/<name>-<time>)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(1, help="Worker processes for checks, inference and metrics (1: this process)."),
    until: str = typer.Option("report", help="Last stage: sites, checks, inference, metrics, stats, report."),
    from_stage: str = typer.Option("sites", "--from", help="First stage; later stages reuse the run folder's earlier outputs (needs --out)."),
    site: Optional[list[str]] = typer.Option(None, "--site", help="Run only this site of the protocol (repeatable): one site's part of a federated audit."),
    bundle: bool = typer.Option(False, "--bundle", help="With --until metrics: write the de-identified site bundle <out>/site-bundle.zip (docs/scale.md)."),
    fail_on_criteria: bool = typer.Option(False, "--fail-on-criteria", help=FAIL_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Run the audit a protocol file pre-registers."""
    from audit.federation import bundle_run_folder, key_fingerprint
    from audit.grading.protocol import is_grading_protocol
    from audit.protocol import load_protocol

    setup_logging(verbose)
    if is_grading_protocol(protocol):
        if until != "report" or from_stage != "sites":
            raise UserError("--until/--from: a task: grading protocol runs in one step (audit/grading/runner.py)")
        _grading_run(protocol, out, fail_on_criteria)
        return
    proto = load_protocol(protocol)
    if out is None and from_stage != "sites":
        raise UserError("--from: needs --out, the run folder whose earlier outputs it reuses")
    if bundle and until != "metrics":
        raise UserError(f"--bundle: needs --until metrics (a site bundle holds metrics, not statistics); found --until {until}")
    if bundle:
        key_fingerprint()  # a missing study key stops the run before any work
    run_dir = out or default_run_dir(proto.name)
    _run(proto, run_dir, device, workers, until, quiet, fail_on_criteria, from_stage, tuple(site or ()))
    if bundle:
        console.print(f"[bold]Site bundle:[/bold] {bundle_run_folder(run_dir, proto)}")


@app.command()
@error_boundary
def merge(
    protocol: Path = typer.Argument(..., help="The protocol file every site ran."),
    bundles: list[Path] = typer.Argument(..., help="Site bundles (each site's site-bundle.zip)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder for the merged audit (default reports/<name>-<time>)."),
    until: str = typer.Option("report", help="Last stage: stats or report."),
    fail_on_criteria: bool = typer.Option(False, "--fail-on-criteria", help=FAIL_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Verify site bundles against one protocol, merge them, and run statistics and the report centrally."""
    from audit.federation import merge_into_run_folder
    from audit.protocol import load_protocol

    setup_logging(verbose)
    if until not in JUDGED_STAGES:
        raise UserError(f"--until: allowed values are {list(JUDGED_STAGES)}; found {until!r}")
    proto = load_protocol(protocol)
    run_dir = out or default_run_dir(proto.name)
    merged = merge_into_run_folder(proto, bundles, run_dir)
    console.print(f"Merged {len(bundles)} bundles: {merged.manifest['site'].nunique()} sites, {len(merged.manifest)} cases")
    _run(proto, run_dir, "cpu", 1, until, quiet, fail_on_criteria, "stats")


@app.command()
@error_boundary
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default reports/demo-<time>)."),
    cases: Optional[int] = typer.Option(None, "--cases", "-n", help="Number of synthetic cases, at least 8 (default: the demo protocol's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Cohort seed (default: the demo protocol's)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    modality: str = typer.Option("mri", "--modality", help="mri (cervical MRI demo) or ct (CT vertebra-labelling demo, docs/ct.md)."),
    fail_on_criteria: bool = typer.Option(False, "--fail-on-criteria", help=FAIL_HELP),
    task: str = typer.Option("segmentation", "--task", help="segmentation (the demo model on synthetic MRI) or grading (synthetic stenosis grades)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Audit the packaged demo model on a generated synthetic multi-site cohort and write a report."""
    import dataclasses

    from audit.protocol import load_protocol

    setup_logging(verbose)
    if task not in ("segmentation", "grading"):
        raise UserError(f"--task: allowed values are ['segmentation', 'grading']; found {task!r}")
    if task == "grading":
        _grading_demo(out or default_run_dir("demo-grading"), cases, seed, fail_on_criteria)
        return
    if cases is not None and cases < 8:
        raise UserError(f"--cases: must be at least 8 (two per site); found {cases}")
    if modality not in ("mri", "ct"):
        raise UserError(f"--modality: allowed values are 'mri', 'ct'; found {modality!r}")
    proto = load_protocol(demo_protocol_path(modality))
    cohort = proto.synthetic_cohort
    assert cohort is not None  # the demo protocol always has one
    cohort = dataclasses.replace(cohort, n_cases=cases or cohort.n_cases, seed=cohort.seed if seed is None else seed)
    proto = dataclasses.replace(proto, synthetic_cohort=cohort)
    start = time.perf_counter()
    try:
        _run(proto, out or default_run_dir("demo-ct" if modality == "ct" else "demo"), device, workers or os.cpu_count() or 1, "report", quiet, fail_on_criteria)
    except typer.Exit:
        console.print(f"Demo finished in {time.perf_counter() - start:.1f} s")
        raise
    console.print(f"Demo finished in {time.perf_counter() - start:.1f} s")


def _grading_run(protocol: Path, out: Optional[Path], fail_on_criteria: bool) -> None:
    """``run`` of a ``task: grading`` protocol: the grading runner (audit/grading/runner.py), not the pipeline."""
    from audit.grading.protocol import load_grading_protocol, read_grading_input
    from audit.grading.runner import run_grading_table

    proto = load_grading_protocol(protocol)
    start = time.perf_counter()
    table, failures, series = read_grading_input(proto)
    _grading_summary(run_grading_table(table, failures, out or default_run_dir(proto.name), proto.audit, series), start, fail_on_criteria)


def _grading_demo(run_dir: Path, cases: Optional[int], seed: Optional[int], fail_on_criteria: bool) -> None:
    """``demo --task grading``: the self-contained grading runner (audit/grading/runner.py), not the pipeline."""
    from audit.grading.runner import run_grading_demo

    if cases is not None and cases < 8:
        raise UserError(f"--cases: must be at least 8 (two per site); found {cases}")
    start = time.perf_counter()
    _grading_summary(run_grading_demo(run_dir, n_patients=cases, seed=seed), start, fail_on_criteria)


def _grading_summary(result: Any, start: float, fail_on_criteria: bool) -> None:
    """Print a grading run's outcome; exit 3 on unmet criteria under --fail-on-criteria."""
    console.print(f"[bold]Run folder:[/bold] {result.run_dir}")
    console.print(f"Graded levels: {result.n_levels}   failed rows: {result.n_failed}   time: {time.perf_counter() - start:.1f} s")
    for cid, status in result.acceptance:
        console.print(f"Criterion {cid}: {status.upper()}")
    console.print(f"[bold]Results:[/bold] {result.results_path}")
    console.print(f"[bold]Report:[/bold]  {result.report_path}")
    not_passed = [f"{cid} {status}" for cid, status in result.acceptance if status != "pass"]
    if fail_on_criteria and not_passed:
        typer.echo(f"Acceptance criteria not met: {', '.join(not_passed)} (exit status {EXIT_CRITERIA}, --fail-on-criteria)", err=True)
        raise typer.Exit(EXIT_CRITERIA)


def demo_protocol_path(modality: str = "mri") -> Path:
    """The demo protocol shipped as package data (``protocols/demo.yaml`` and ``protocols/demo_ct.yaml`` link to them)."""
    return Path(str(resources.files("audit") / "data" / ("demo_ct.yaml" if modality == "ct" else "demo.yaml")))


@sites_app.command("check")
@error_boundary
def sites_check(
    config: Path = typer.Argument(..., help="Site config YAML."),
    protocol: Optional[Path] = typer.Option(None, "--protocol", help="Protocol whose age bands to count (default bands otherwise)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Report what a data manager needs before an audit; exit status 1 when there are errors."""
    from audit.protocol import load_protocol
    from audit.records import DEFAULT_AGE_BAND_EDGES
    from audit.sites import check_site, load_site_config

    setup_logging(verbose)
    cfg = load_site_config(config)
    edges = load_protocol(protocol).subgroups.age_bands if protocol else DEFAULT_AGE_BAND_EDGES
    report = check_site(cfg, age_band_edges=edges)
    console.print(report)
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEMS)


for _command in (report, package, verify, compare):  # the reviewer's commands, listed after those that run audits
    app.command()(_command)


def main() -> None:
    """Entry point of ``python -m audit`` and ``python -m audit.cli``."""
    app(prog_name="spine-audit")


if __name__ == "__main__":  # pragma: no cover
    main()
