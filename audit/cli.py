"""Command-line interface: ``spine-audit run | demo | sites check | report | package | verify``.

The only module that writes to the terminal; everything else logs.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shlex
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="External-validation and fairness audits of spine MRI segmentation models.")
sites_app = typer.Typer(no_args_is_help=True, help="Inspect site data before an audit.")
app.add_typer(sites_app, name="sites")
console = Console(stderr=False)

_STAGE_LABELS = {"sites": "Reading sites", "checks": "Checking cases", "inference": "Segmenting", "metrics": "Computing metrics", "stats": "Statistics", "report": "Writing report"}


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


def _run(protocol_path: Path | None, protocol, run_dir: Path, device: str, workers: int, until: str, quiet: bool, from_stage: str = "sites") -> None:
    from audit.pipeline import run_audit

    command = "spine-audit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with Progress(
        TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=quiet, transient=False
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGE_LABELS.get(stage, stage), total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        summary = run_audit(
            protocol, run_dir=run_dir, device=device, workers=workers, until=until, from_stage=from_stage, progress=progress, command=command
        )
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


@app.command()
def run(
    protocol: Path = typer.Argument(..., exists=True, dir_okay=False, help="Protocol YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default reports/<name>-<time>)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    workers: int = typer.Option(1, min=1, help="Parallel workers for loading and metrics."),
    until: str = typer.Option("report", help="Last stage: sites, checks, inference, metrics, stats, report."),
    from_stage: str = typer.Option("sites", "--from", help="First stage; later stages reuse the run folder's earlier outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the audit a protocol file pre-registers."""
    from audit.fileio import LockedError
    from audit.protocol import ProtocolError, load_protocol
    from audit.runfolder import RunFolderError

    _setup_logging(verbose)
    try:
        proto = load_protocol(protocol)
    except ProtocolError as exc:
        console.print(f"[red]Invalid protocol:[/red] {exc}")
        raise typer.Exit(2) from None
    if out is None and from_stage != "sites":
        console.print("[red]--from needs --out:[/red] the run folder whose earlier outputs it reuses")
        raise typer.Exit(2)
    try:
        _run(protocol, proto, out or _default_run_dir(proto.name), device, workers, until, quiet, from_stage)
    except (RunFolderError, LockedError) as exc:
        console.print(f"[red]Cannot run:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default reports/demo-<time>)."),
    cases: Optional[int] = typer.Option(None, "--cases", "-n", min=8, help="Number of synthetic cases (default: the demo protocol's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Cohort seed (default: the demo protocol's)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Audit the packaged demo model on a generated synthetic multi-site cohort and write a report."""
    import dataclasses

    from audit.protocol import load_protocol

    _setup_logging(verbose)
    proto = load_protocol(demo_protocol_path())
    cohort = proto.synthetic_cohort
    assert cohort is not None  # the demo protocol always has one
    cohort = dataclasses.replace(cohort, n_cases=cases or cohort.n_cases, seed=cohort.seed if seed is None else seed)
    proto = dataclasses.replace(proto, synthetic_cohort=cohort)
    start = time.perf_counter()
    _run(None, proto, out or _default_run_dir("demo"), device, 1, "report", quiet)
    console.print(f"Demo finished in {time.perf_counter() - start:.1f} s")


def demo_protocol_path() -> Path:
    """The demo protocol shipped as package data (``protocols/demo.yaml`` links to it)."""
    return Path(str(resources.files("audit") / "data" / "demo.yaml"))


@sites_app.command("check")
def sites_check(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Site config YAML."),
    protocol: Path | None = typer.Option(None, "--protocol", exists=True, dir_okay=False, help="Protocol whose age bands to count (default bands otherwise)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Report what a data manager needs before an audit; exit status 1 when there are errors."""
    from audit.protocol import load_protocol
    from audit.records import DEFAULT_AGE_BAND_EDGES
    from audit.sites import check_site, load_site_config

    _setup_logging(verbose)
    try:
        cfg = load_site_config(config)
        edges = load_protocol(protocol).subgroups.age_bands if protocol else DEFAULT_AGE_BAND_EDGES
    except (ValueError, KeyError) as exc:
        console.print(f"[red]Invalid site config or protocol:[/red] {exc}")
        raise typer.Exit(2) from None
    report = check_site(cfg, age_band_edges=edges)
    console.print(report)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A run folder with results.json."),
    pdf: bool = typer.Option(False, "--pdf", help="Also print report.pdf through headless Chromium (must be installed)."),
) -> None:
    """Re-render report.html from a run folder (and report.pdf with --pdf)."""
    from audit.report import render_report
    from audit.report.pdf import ChromiumNotFound, print_pdf

    _setup_logging(False)
    html = render_report(run_dir)
    console.print(f"[bold]Report:[/bold] {html}")
    if pdf:
        try:
            console.print(f"[bold]PDF:[/bold] {print_pdf(html)}")
        except (ChromiumNotFound, RuntimeError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None


@app.command()
def package(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Zip path (default <run>/evidence-package.zip)."),
) -> None:
    """Write the evidence package (report, results, tables, protocol, de-identified manifest, checksums)."""
    from audit.report import build_package

    _setup_logging(False)
    console.print(f"[bold]Evidence package:[/bold] {build_package(run_dir, out)}")


@app.command()
def verify(zip_path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Check an evidence package's checksums and contents; exit status 1 when anything is wrong."""
    from audit.report import verify_package

    _setup_logging(False)
    result = verify_package(zip_path)
    if result.ok:
        console.print(f"[green]OK[/green]: {zip_path}")
        return
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}")
    raise typer.Exit(1)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., exists=True, file_okay=False, help="Two or more run folders of the same protocol and cases; the first is the baseline."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV file for the comparison table."),
    references: bool = typer.Option(False, "--references", help="The runs score one model against different reference label sets."),
) -> None:
    """Paired comparison of models (or of reference standards) on the same cases."""
    from audit.protocol import load_protocol
    from audit.stats import compare_models, compare_references

    _setup_logging(False)
    if len(runs) < 2:
        console.print("[red]compare needs at least two run folders[/red]")
        raise typer.Exit(2)
    from audit.runfolder import PROTOCOL, RunFolder

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
        table = compare_models(tables, **kwargs)
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


if __name__ == "__main__":  # pragma: no cover
    app()
