"""The reviewer's commands: ``report`` (re-render), ``package`` and ``verify`` (evidence package), ``compare``.

:mod:`audit.cli` registers them on the app after the commands that run audits (the order of ``--help``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from audit.cli_common import DEBUG_HELP, KEY_HELP, console, error_boundary, require_run_folder, setup_logging
from audit.errors import EXIT_PROBLEMS, UserError

__all__ = ["compare", "package", "report", "verify"]


@error_boundary
def report(
    run_dir: Path = typer.Argument(..., help="A run folder with results.json."),
    pdf: bool = typer.Option(False, "--pdf", help="Also print report.pdf through headless Chromium (must be installed)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Re-render report.html from a run folder (and report.pdf with --pdf)."""
    from audit.report import render_report
    from audit.report.pdf import ChromiumNotFound, print_pdf
    from audit.runfolder import MANIFEST, METRICS, RESULTS

    setup_logging(False)
    require_run_folder(run_dir, (RESULTS, MANIFEST, METRICS), "report")
    html = render_report(run_dir)
    console.print(f"[bold]Report:[/bold] {html}")
    if pdf:
        try:
            console.print(f"[bold]PDF:[/bold] {print_pdf(html)}")
        except (ChromiumNotFound, RuntimeError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None


@error_boundary
def package(
    run_dir: Path = typer.Argument(..., help="A finished run folder (with report.html)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Zip path (default <run>/evidence-package.zip)."),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Write the evidence package (report, results, tables, protocol, de-identified manifest, checksums)."""
    from audit.report import build_package
    from audit.report.package import REQUIRED_FILES, read_key

    setup_logging(False)
    require_run_folder(run_dir, REQUIRED_FILES, "package")
    if out is not None and not out.absolute().parent.is_dir():
        raise UserError(f"--out: folder {str(out.absolute().parent)!r} does not exist")
    secret = read_key(key) if key is not None else None
    console.print(f"[bold]Evidence package:[/bold] {build_package(run_dir, out, key=secret)}")


@error_boundary
def verify(
    zip_path: Path = typer.Argument(..., help="An evidence package (zip) written by `spine-audit package`."),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Check an evidence package's checksums and contents; exit status 1 when anything is wrong."""
    from audit.report import verify_package
    from audit.report.package import read_key

    setup_logging(False)
    if not zip_path.is_file():
        state = "is not a file" if zip_path.exists() else "does not exist"
        raise UserError(f"evidence package {str(zip_path)!r} {state}")
    secret = read_key(key) if key is not None else None
    result = verify_package(zip_path, key=secret)
    if result.ok:
        console.print(f"[green]OK[/green]: {zip_path} ({result.signature})", soft_wrap=True)
        return
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}", soft_wrap=True)
    raise typer.Exit(EXIT_PROBLEMS)


@error_boundary
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run folders of the same protocol and cases; the first is the baseline."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV file for the comparison table."),
    references: bool = typer.Option(False, "--references", help="The runs score one model against different reference label sets."),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="Compare every pair of runs (one Holm family), not only each run against the first."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Paired comparison of models (or of reference standards) on the same cases."""
    from audit.protocol import load_protocol
    from audit.stats import compare_models, compare_references

    setup_logging(False)
    if len(runs) < 2:
        raise UserError(f"compare needs at least two run folders; found {len(runs)}")
    from audit.runfolder import MANIFEST, METRICS, PROTOCOL, RunFolder

    for run_folder in runs:
        require_run_folder(run_folder, (PROTOCOL, METRICS, MANIFEST), "compare")
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
