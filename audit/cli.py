"""Command-line interface: ``spine-audit run | demo | sites check | report | package | verify | compare``.

The only module that writes to the terminal; everything else logs. One error boundary (:func:`_errors`) wraps
every command: a :class:`~audit.errors.UserError` (bad protocol, site config, model path, missing or unfinished
run folder) or an ``OSError`` the user fixes (no permission, full or read-only disk) prints one line on stderr and
exits 2; any other exception is a bug and exits 1 with one line. ``--debug`` adds the traceback. Exit statuses:
0 success, 1 problems found (``sites check``, ``verify``) or an internal error, 2 a user error, 3 an acceptance
criterion failed or was inconclusive under ``--fail-on-criteria``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from audit.errors import EXIT_CRITERIA, EXIT_PROBLEMS, EXIT_USER_ERROR, IncompleteRunError, UserError, is_user_os_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="External-validation and fairness audits of spine MRI segmentation models.")
sites_app = typer.Typer(no_args_is_help=True, help="Inspect site data before an audit.")
app.add_typer(sites_app, name="sites")
console = Console(stderr=False)

_STAGE_LABELS = {"sites": "Reading sites", "checks": "Checking cases", "inference": "Segmenting", "metrics": "Computing metrics", "stats": "Statistics", "report": "Writing report"}
#: Stages after which acceptance criteria have been judged (``--fail-on-criteria`` needs one of them).
_JUDGED_STAGES = ("stats", "report")

F = TypeVar("F", bound=Callable[..., Any])

_DEBUG_HELP = "On an error, also print the Python traceback."
_VERBOSE_HELP = "Debug logging."
_QUIET_HELP = "No progress bars."
_DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."
_FAIL_HELP = "Exit with status 3 when any acceptance criterion fails or is inconclusive (for pipelines)."
_KEY_HELP = "File holding a secret key (at least 16 bytes): SHA256SUMS is signed (package) or the signature checked (verify) with HMAC-SHA256."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_line(exc: BaseException) -> tuple[int, str]:
    """Exit status and the one line shown for an exception that ended a command."""
    if isinstance(exc, UserError):
        return EXIT_USER_ERROR, f"Error: {_one_line(exc)}"
    if is_user_os_error(exc):
        assert isinstance(exc, OSError)
        where = f" {exc.filename}" if exc.filename else ""
        return EXIT_USER_ERROR, f"Error: cannot write{where}: {exc.strerror or exc} (check the folder's permissions and free disk space, or choose another with --out)"
    return EXIT_PROBLEMS, f"Internal error: {type(exc).__name__}: {_one_line(exc)} (a bug in spine-audit; rerun with --debug and report the traceback)"


def _errors(command: F) -> F:
    """The error boundary of a command: one line on stderr and exit 2 for user errors, traceback with ``--debug``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # the one boundary: every exception becomes one line and an exit status
            code, line = _error_line(exc)
            if kwargs.get("debug"):
                traceback.print_exc(file=sys.stderr)
            typer.echo(line, err=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )


def _default_run_dir(name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "audit"
    return Path("reports") / f"{slug}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _missing_folders(path: Path) -> list[Path]:
    """The folders that creating ``path`` (with its parents) would create, deepest first."""
    out: list[Path] = []
    current = path.absolute()
    while not current.exists() and current != current.parent:
        out.append(current)
        current = current.parent
    return out


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders this invocation created (deepest first) while they are empty."""
    for folder in created:
        try:
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()
        except OSError:
            return


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
    if fail_on_criteria and until not in _JUDGED_STAGES:
        raise UserError(f"--fail-on-criteria: the criteria are judged in the stats stage; use --until stats or report, not {until!r}")
    command = "spine-audit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    created = _missing_folders(run_dir)
    try:
        with Progress(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=quiet, transient=False
        ) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(_STAGE_LABELS.get(stage, stage), total=max(total, 1))
                bar.update(tasks[stage], completed=done, total=max(total, 1))

            summary = run_audit(
                protocol, run_dir=run_dir, device=device, workers=workers, until=until, from_stage=from_stage, progress=progress, command=command,
                sites=sites,
            )
    except BaseException:
        _remove_if_empty(created)  # no empty run folder left behind
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
@_errors
def run(
    protocol: Path = typer.Argument(..., help="Protocol YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default reports/<name>-<time>)."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    workers: int = typer.Option(1, help="Worker processes for checks, inference and metrics (1: this process)."),
    until: str = typer.Option("report", help="Last stage: sites, checks, inference, metrics, stats, report."),
    from_stage: str = typer.Option("sites", "--from", help="First stage; later stages reuse the run folder's earlier outputs (needs --out)."),
    site: Optional[list[str]] = typer.Option(None, "--site", help="Run only this site of the protocol (repeatable): one site's part of a federated audit."),
    bundle: bool = typer.Option(False, "--bundle", help="With --until metrics: write the de-identified site bundle <out>/site-bundle.zip (docs/scale.md)."),
    fail_on_criteria: bool = typer.Option(False, "--fail-on-criteria", help=_FAIL_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Run the audit a protocol file pre-registers."""
    from audit.federation import bundle_run_folder, key_fingerprint
    from audit.grading.protocol import is_grading_protocol
    from audit.protocol import load_protocol

    _setup_logging(verbose)
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
    run_dir = out or _default_run_dir(proto.name)
    _run(proto, run_dir, device, workers, until, quiet, fail_on_criteria, from_stage, tuple(site or ()))
    if bundle:
        console.print(f"[bold]Site bundle:[/bold] {bundle_run_folder(run_dir, proto)}")


@app.command()
@_errors
def merge(
    protocol: Path = typer.Argument(..., help="The protocol file every site ran."),
    bundles: list[Path] = typer.Argument(..., help="Site bundles (each site's site-bundle.zip)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder for the merged audit (default reports/<name>-<time>)."),
    until: str = typer.Option("report", help="Last stage: stats or report."),
    fail_on_criteria: bool = typer.Option(False, "--fail-on-criteria", help=_FAIL_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Verify site bundles against one protocol, merge them, and run statistics and the report centrally."""
    from audit.federation import merge_into_run_folder
    from audit.protocol import load_protocol

    _setup_logging(verbose)
    if until not in _JUDGED_STAGES:
        raise UserError(f"--until: allowed values are {list(_JUDGED_STAGES)}; found {until!r}")
    proto = load_protocol(protocol)
    run_dir = out or _default_run_dir(proto.name)
    merged = merge_into_run_folder(proto, bundles, run_dir)
    console.print(f"Merged {len(bundles)} bundles: {merged.manifest['site'].nunique()} sites, {len(merged.manifest)} cases")
    _run(proto, run_dir, "cpu", 1, until, quiet, fail_on_criteria, "stats")


@app.command()
@_errors
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default reports/demo-<time>)."),
    cases: Optional[int] = typer.Option(None, "--cases", "-n", help="Number of synthetic cases, at least 8 (default: the demo protocol's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Cohort seed (default: the demo protocol's)."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    modality: str = typer.Option("mri", "--modality", help="mri (cervical MRI demo) or ct (CT vertebra-labelling demo, docs/ct.md)."),
    fail_on_criteria: bool = typer.Option(False, "--fail-on-criteria", help=_FAIL_HELP),
    task: str = typer.Option("segmentation", "--task", help="segmentation (the demo model on synthetic MRI) or grading (synthetic stenosis grades)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Audit the packaged demo model on a generated synthetic multi-site cohort and write a report."""
    import dataclasses

    from audit.protocol import load_protocol

    _setup_logging(verbose)
    if task not in ("segmentation", "grading"):
        raise UserError(f"--task: allowed values are ['segmentation', 'grading']; found {task!r}")
    if task == "grading":
        _grading_demo(out or _default_run_dir("demo-grading"), cases, seed, fail_on_criteria)
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
        _run(proto, out or _default_run_dir("demo-ct" if modality == "ct" else "demo"), device, workers or os.cpu_count() or 1, "report", quiet, fail_on_criteria)
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
    _grading_summary(run_grading_table(table, failures, out or _default_run_dir(proto.name), proto.audit, series), start, fail_on_criteria)


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
@_errors
def sites_check(
    config: Path = typer.Argument(..., help="Site config YAML."),
    protocol: Optional[Path] = typer.Option(None, "--protocol", help="Protocol whose age bands to count (default bands otherwise)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_VERBOSE_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Report what a data manager needs before an audit; exit status 1 when there are errors."""
    from audit.protocol import load_protocol
    from audit.records import DEFAULT_AGE_BAND_EDGES
    from audit.sites import check_site, load_site_config

    _setup_logging(verbose)
    cfg = load_site_config(config)
    edges = load_protocol(protocol).subgroups.age_bands if protocol else DEFAULT_AGE_BAND_EDGES
    report = check_site(cfg, age_band_edges=edges)
    console.print(report)
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEMS)


def _run_folder(run_dir: Path, needs: tuple[str, ...], command: str) -> Path:
    """A run folder that holds ``needs``; an :class:`IncompleteRunError` that says what to do otherwise."""
    if not run_dir.is_dir():
        state = "is not a folder" if run_dir.exists() else "does not exist"
        raise IncompleteRunError(f"run folder {str(run_dir)!r} {state} (give the --out folder of a `spine-audit run`)")
    missing = [name for name in needs if not (run_dir / name).is_file()]
    if missing:
        raise IncompleteRunError(
            f"run folder {str(run_dir)!r} lacks {missing}: the run did not finish (or stopped early with --until); "
            f"finish it with `spine-audit run PROTOCOL --out {run_dir}` before `spine-audit {command}`"
        )
    return run_dir


@app.command()
@_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run folder with results.json."),
    pdf: bool = typer.Option(False, "--pdf", help="Also print report.pdf through headless Chromium (must be installed)."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Re-render report.html from a run folder (and report.pdf with --pdf)."""
    from audit.report import render_report
    from audit.report.pdf import ChromiumNotFound, print_pdf
    from audit.runfolder import MANIFEST, METRICS, RESULTS

    _setup_logging(False)
    _run_folder(run_dir, (RESULTS, MANIFEST, METRICS), "report")
    html = render_report(run_dir)
    console.print(f"[bold]Report:[/bold] {html}")
    if pdf:
        try:
            console.print(f"[bold]PDF:[/bold] {print_pdf(html)}")
        except (ChromiumNotFound, RuntimeError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None


@app.command()
@_errors
def package(
    run_dir: Path = typer.Argument(..., help="A finished run folder (with report.html)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Zip path (default <run>/evidence-package.zip)."),
    key: Optional[Path] = typer.Option(None, "--key", help=_KEY_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Write the evidence package (report, results, tables, protocol, de-identified manifest, checksums)."""
    from audit.report import build_package
    from audit.report.package import REQUIRED_FILES, read_key

    _setup_logging(False)
    _run_folder(run_dir, REQUIRED_FILES, "package")
    if out is not None and not out.absolute().parent.is_dir():
        raise UserError(f"--out: folder {str(out.absolute().parent)!r} does not exist")
    secret = read_key(key) if key is not None else None
    console.print(f"[bold]Evidence package:[/bold] {build_package(run_dir, out, key=secret)}")


@app.command()
@_errors
def verify(
    zip_path: Path = typer.Argument(..., help="An evidence package (zip) written by `spine-audit package`."),
    key: Optional[Path] = typer.Option(None, "--key", help=_KEY_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Check an evidence package's checksums and contents; exit status 1 when anything is wrong."""
    from audit.report import verify_package
    from audit.report.package import read_key

    _setup_logging(False)
    if not zip_path.is_file():
        state = "is not a file" if zip_path.exists() else "does not exist"
        raise UserError(f"evidence package {str(zip_path)!r} {state}")
    secret = read_key(key) if key is not None else None
    result = verify_package(zip_path, key=secret)
    if result.ok:
        console.print(f"[green]OK[/green]: {zip_path} ({result.signature})")
        return
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}", soft_wrap=True)
    raise typer.Exit(EXIT_PROBLEMS)


@app.command()
@_errors
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run folders of the same protocol and cases; the first is the baseline."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV file for the comparison table."),
    references: bool = typer.Option(False, "--references", help="The runs score one model against different reference label sets."),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="Compare every pair of runs (one Holm family), not only each run against the first."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Paired comparison of models (or of reference standards) on the same cases."""
    from audit.protocol import load_protocol
    from audit.stats import compare_models, compare_references

    _setup_logging(False)
    if len(runs) < 2:
        raise UserError(f"compare needs at least two run folders; found {len(runs)}")
    from audit.runfolder import MANIFEST, METRICS, PROTOCOL, RunFolder

    for run_folder in runs:
        _run_folder(run_folder, (PROTOCOL, METRICS, MANIFEST), "compare")
    protocol = load_protocol(RunFolder(runs[0]).path(PROTOCOL))
    tables = {}
    for run in runs:
        folder = RunFolder(run)
        tables[run.name] = folder.read_metrics().merge(folder.read_manifest(resolve=False)[["case_id", "patient_id"]], on="case_id", how="left")
    names = sorted(set.intersection(*(set(t["metric"]) for t in tables.values())))
    kwargs = dict(structures=protocol.structures, metrics=names, statistics=protocol.statistics)
    if references:
        first, second = list(tables)[:2]
        table = compare_references(tables[first], tables[second], names=(first, second), **kwargs)
    else:
        table = compare_models(tables, pairs="all" if all_pairs else "baseline", **kwargs)
    view = Table(title="Paired differences (other - baseline)")
    cols = ("baseline", "other", "structure", "metric", "n_patients", "mean_difference", "ci_low", "ci_high", "p_holm")
    for col in cols:
        view.add_column(col)
    for rec in table.itertuples(index=False):
        view.add_row(*(f"{getattr(rec, c):.4g}" if isinstance(getattr(rec, c), float) else str(getattr(rec, c)) for c in cols))
    console.print(view)
    if out:
        table.to_csv(out, index=False)
        console.print(f"[bold]Comparison table:[/bold] {out}")


def main() -> None:
    """Entry point of ``python -m audit`` and ``python -m audit.cli``."""
    app(prog_name="spine-audit")


if __name__ == "__main__":  # pragma: no cover
    main()
