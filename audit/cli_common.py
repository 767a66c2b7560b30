"""What every spine-audit command shares: the Typer apps, the console, help texts and the error boundary.

One error boundary (:func:`error_boundary`) wraps every command: a :class:`~audit.errors.UserError` (bad protocol,
site config, model path, missing or unfinished run folder) or an ``OSError`` the user fixes (no permission, full or
read-only disk) prints one line on stderr and exits 2; any other exception is a bug and exits 1 with one line.
``--debug`` adds the traceback. Exit statuses: 0 success, 1 problems found (``sites check``, ``verify``) or an
internal error, 2 a user error, 3 an acceptance criterion failed or was inconclusive under ``--fail-on-criteria``.
Only the ``audit.cli*`` modules write to the terminal; everything else logs.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from audit.errors import EXIT_PROBLEMS, EXIT_USER_ERROR, IncompleteRunError, UserError, is_user_os_error

__all__ = [
    "app", "sites_app", "console", "error_boundary", "setup_logging", "default_run_dir", "missing_folders", "remove_if_empty",
    "require_run_folder", "STAGE_LABELS", "JUDGED_STAGES", "DEBUG_HELP", "VERBOSE_HELP", "QUIET_HELP", "DEVICE_HELP", "FAIL_HELP", "KEY_HELP",
]  # fmt: skip

app = typer.Typer(add_completion=False, no_args_is_help=True, help="External-validation and fairness audits of spine MRI segmentation models.")
sites_app = typer.Typer(no_args_is_help=True, help="Inspect site data before an audit.")
app.add_typer(sites_app, name="sites")
console = Console(stderr=False)

STAGE_LABELS = {"sites": "Reading sites", "checks": "Checking cases", "inference": "Segmenting", "metrics": "Computing metrics", "stats": "Statistics", "report": "Writing report"}
#: Stages after which acceptance criteria have been judged (``--fail-on-criteria`` needs one of them).
JUDGED_STAGES = ("stats", "report")

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_HELP = "On an error, also print the Python traceback."
VERBOSE_HELP = "Debug logging."
QUIET_HELP = "No progress bars."
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."
FAIL_HELP = "Exit with status 3 when any acceptance criterion fails or is inconclusive (for pipelines)."
KEY_HELP = "File holding a secret key (at least 16 bytes): SHA256SUMS is signed (package) or the signature checked (verify) with HMAC-SHA256."


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


def error_boundary(command: F) -> F:
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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )


def default_run_dir(name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "audit"
    return Path("reports") / f"{slug}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def missing_folders(path: Path) -> list[Path]:
    """The folders that creating ``path`` (with its parents) would create, deepest first."""
    out: list[Path] = []
    current = path.absolute()
    while not current.exists() and current != current.parent:
        out.append(current)
        current = current.parent
    return out


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders this invocation created (deepest first) while they are empty."""
    for folder in created:
        try:
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()
        except OSError:
            return


def require_run_folder(run_dir: Path, needs: tuple[str, ...], command: str) -> Path:
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
