"""The run folder: one object that owns every file name of an audit run and reads and writes its tables.

Layout (docs/report.md, "Run folder")::

    <run>/protocol.yaml        the protocol as run (canonical YAML)
    <run>/run.json             stage bookkeeping: protocol sha256, stages completed, synthetic cohort settings
    <run>/manifest.csv         one row per case (sites stage; prediction_path filled by the inference stage)
    <run>/model.json           model identity and label map (inference stage)
    <run>/metrics.csv          the long metric table (metrics stage)
    <run>/failures.csv         every per-case failure so far; stages/failures-<stage>.csv per stage
    <run>/results.json         statistics and provenance (stats stage), validated before it is written
    <run>/tables/              machine-readable tables (stats stage)
    <run>/report.html          the report (report stage)
    <run>/predictions/         content-addressed prediction cache (kept across reruns)
    <run>/metric-cache/        per-case metric rows keyed by input hashes (kept across reruns)
    <run>/cohort/              the generated synthetic cohort, when the protocol asks for one
    <run>/.lock                present while a run writes into the folder

Paths inside the folder are stored relative to it (so a relative ``--out`` works and a moved folder still
renders); paths outside it are stored absolute. Every table is written atomically
(:func:`audit.fileio.atomic_write`). The folder is created only when a run first locks it, and removed again
if that run fails before finishing a stage (no debris). See docs/runfolder.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import UserError
from audit.fileio import FolderLock, atomic_write, atomic_write_text
from audit.records import FAILURE_COLUMNS, CaseFailure, failure_table, validate_manifest, validate_metric_table

logger = logging.getLogger(__name__)

__all__ = [
    "COHORT", "FAILURES", "IMAGE_WARNINGS", "IMAGE_WARNING_COLUMNS", "LOCK", "MANIFEST", "METRICS", "METRIC_CACHE", "MODEL", "PATH_COLUMNS", "PREDICTIONS", "PROTOCOL",
    "REPORT", "RESULTS", "STAGES", "STAGE_OUTPUTS", "STATE", "TABLES", "VERTEBRAE", "VERTEBRAE_SUMMARY", "RunFolder", "RunFolderError",
]  # fmt: skip

PROTOCOL = "protocol.yaml"
STATE = "run.json"
MANIFEST = "manifest.csv"
MODEL = "model.json"
METRICS = "metrics.csv"
#: Per-vertebra rows and their summaries (metrics stage, when the protocol has a ``vertebrae:`` section).
VERTEBRAE = "vertebrae.csv"
VERTEBRAE_SUMMARY = "vertebrae.json"
FAILURES = "failures.csv"
#: Per-case warnings of the checks stage (problems that do not stop a case), columns :data:`IMAGE_WARNING_COLUMNS`.
IMAGE_WARNINGS = "image_warnings.csv"
IMAGE_WARNING_COLUMNS = ("case_id", "site", "warning")
RESULTS = "results.json"
TABLES = "tables"
REPORT = "report.html"
PREDICTIONS = "predictions"
METRIC_CACHE = "metric-cache"
COHORT = "cohort"
STAGE_RECORDS = "stages"
LOCK = ".lock"

#: Manifest columns holding file paths (stored relative to the run folder when inside it).
PATH_COLUMNS = ("image_path", "label_path", "prediction_path")
#: Numeric manifest columns; every other column is read back as text.
_NUMERIC_MANIFEST = ("field_strength_t", "age_years")

#: The pipeline's stages, in order.
STAGES = ("sites", "checks", "inference", "metrics", "stats", "report")
#: What each stage writes (besides its failure record); rerunning from a stage removes these for it and every
#: later stage first, so no output of an earlier run survives beside newer ones. Caches are never removed.
STAGE_OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "sites": (MANIFEST,),
    "checks": (IMAGE_WARNINGS,),
    "inference": (MODEL,),
    "metrics": (METRICS, VERTEBRAE, VERTEBRAE_SUMMARY),
    "stats": (RESULTS, TABLES),
    "report": (REPORT,),
}


class RunFolderError(UserError, RuntimeError):
    """A run folder cannot be used as asked (missing earlier outputs, another protocol, locked)."""


class RunFolder:
    """A run folder: file names, table I/O, stage bookkeeping and the lock.

    Parameters
    ----------
    root : path
        The folder (relative paths are taken from the current directory and made absolute once, so a later
        ``chdir`` changes nothing). Nothing is created until :meth:`lock` or a write.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = RunFolder(pathlib.Path(tempfile.mkdtemp()) / "run")
    >>> folder.path(METRICS).name, folder.root.exists()
    ('metrics.csv', False)
    >>> folder.stored_path(folder.root / "predictions" / "ab" / "x.nii.gz")
    'predictions/ab/x.nii.gz'
    """

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ---- names ---------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Absolute path of a member (one of this module's name constants, or ``tables/<x>.csv``)."""
        return self.root / name

    @property
    def predictions_dir(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def cohort_dir(self) -> Path:
        return self.root / COHORT

    @property
    def metric_cache_dir(self) -> Path:
        return self.root / METRIC_CACHE

    @property
    def report_path(self) -> Path:
        return self.root / REPORT

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS

    def has(self, name: str) -> bool:
        """Whether a member exists."""
        return self.path(name).exists()

    def stored_path(self, path: str | Path | None) -> str | None:
        """How a file path is written in a table: relative (POSIX) inside the folder, absolute outside."""
        if path is None or (isinstance(path, float) and pd.isna(path)) or str(path) == "":
            return None
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(self.root).as_posix()
        except ValueError:
            return str(absolute)

    def resolve(self, stored: str | Path | None) -> str | None:
        """The absolute path of a path as stored in a table (inverse of :meth:`stored_path`)."""
        if stored is None or (isinstance(stored, float) and pd.isna(stored)) or str(stored) == "":
            return None
        p = Path(stored)
        return str(p if p.is_absolute() else self.root / p)

    # ---- lock and lifecycle --------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold the folder's lock file for the duration; create the folder, and remove it again if this call
        created it and the run failed before completing a stage (or left it empty).

        Raises
        ------
        audit.fileio.LockedError
            When another live process holds the lock (the message names it).
        """
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        failed = True
        try:
            with FolderLock(self.path(LOCK)):
                yield self
            failed = False
        finally:
            if created and self.root.is_dir() and (not any(self.root.iterdir()) or failed and not self.completed()):
                shutil.rmtree(self.root)  # this run made it and finished no stage: leave no debris
                logger.info("removed the run folder %s (created by a run that wrote nothing usable)", self.root)

    # ---- stage bookkeeping ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """``run.json``: ``protocol_sha256``, ``completed`` stages, ``cohort`` settings (empty when absent)."""
        try:
            state = json.loads(self.path(STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # treated as "no stage complete": --from a later stage is refused
            logger.warning("run folder %s: %s unreadable (%s); no stage counts as complete", self.root, STATE, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self, state: Mapping[str, Any]) -> None:
        atomic_write_text(self.path(STATE), json.dumps(state, indent=1, sort_keys=True))

    def begin(self, *, protocol_sha256: str, start: str, until: str) -> None:
        """Check that stages before ``start`` are complete for this protocol, then clear ``start`` and later.

        Raises
        ------
        RunFolderError
            If ``start`` is not ``sites`` and the folder lacks an earlier stage's outputs or was written by
            another protocol.
        """
        if start not in STAGES or until not in STAGES:
            raise ValueError(f"stages: allowed values are {list(STAGES)}; found from={start!r}, until={until!r}")
        if STAGES.index(start) > STAGES.index(until):
            raise ValueError(f"--from {start} comes after --until {until}; stages run in the order {list(STAGES)}")
        state = self.state()
        before = STAGES[: STAGES.index(start)]
        if before:
            if state.get("protocol_sha256") not in (None, protocol_sha256):
                raise RunFolderError(
                    f"run folder {self.root} was written by another protocol (sha256 {str(state['protocol_sha256'])[:12]}...); "
                    f"--from {start} would mix the two: rerun from sites or use another --out"
                )
            missing = [s for s in before if s not in state.get("completed", [])]
            if missing:
                raise RunFolderError(f"--from {start} needs the outputs of stage {missing[0]!r}, which run folder {self.root} lacks; run --until {missing[0]} first")
        self.clear_from(start)
        completed = [s for s in state.get("completed", []) if s in before]
        self._write_state({**state, "protocol_sha256": protocol_sha256, "completed": completed})

    def complete(self, stage: str, **extra: Any) -> None:
        """Record that ``stage`` finished (and any extra state, e.g. the cohort settings)."""
        state = self.state()
        completed = [s for s in state.get("completed", []) if s != stage] + [stage]
        self._write_state({**state, **extra, "completed": sorted(completed, key=STAGES.index)})

    def completed(self) -> tuple[str, ...]:
        """Stages finished in this folder by its current protocol."""
        return tuple(self.state().get("completed", ()))

    def clear_from(self, stage: str) -> list[str]:
        """Remove the outputs and failure records of ``stage`` and every later stage; return what was removed."""
        removed = []
        for s in STAGES[STAGES.index(stage) :]:
            for name in (*STAGE_OUTPUTS[s], f"{STAGE_RECORDS}/failures-{s}.csv"):
                p = self.path(name)
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
                else:
                    continue
                removed.append(name)
        if removed:
            logger.info("run folder %s: removed outputs of earlier runs %s", self.root, removed)
        return removed

    # ---- tables --------------------------------------------------------------------------------
    def write_csv(self, name: str, table: pd.DataFrame) -> Path:
        """Write a table as CSV atomically (``name`` relative to the folder)."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(target, lambda fh: table.to_csv(fh, index=False, lineterminator="\n"))

    def write_manifest(self, manifest: pd.DataFrame) -> Path:
        """Validate and write ``manifest.csv``, storing path columns relative to the folder when inside it."""
        out = validate_manifest(manifest).copy()
        for column in PATH_COLUMNS:
            if column in out:
                out[column] = [self.stored_path(p) for p in out[column]]
        return self.write_csv(MANIFEST, out)

    def read_manifest(self, *, resolve: bool = True) -> pd.DataFrame:
        """``manifest.csv`` with text columns as text and (``resolve``) absolute file paths."""
        self.require(MANIFEST)
        header = pd.read_csv(self.path(MANIFEST), nrows=0).columns
        dtypes = {c: str for c in header if c not in _NUMERIC_MANIFEST and c != "age_redacted"}
        manifest = pd.read_csv(self.path(MANIFEST), dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in header})
        if resolve:
            for column in PATH_COLUMNS:
                if column in manifest:
                    manifest[column] = [self.resolve(p) for p in manifest[column]]
        return manifest

    def write_metrics(self, table: pd.DataFrame) -> Path:
        """Validate and write ``metrics.csv``."""
        return self.write_csv(METRICS, validate_metric_table(table))

    def read_metrics(self) -> pd.DataFrame:
        """``metrics.csv`` (case ids as text)."""
        self.require(METRICS)
        return pd.read_csv(self.path(METRICS), dtype={"case_id": str, "structure": str, "metric": str, "status": str})

    def write_failures(self, stage: str, failures: Sequence[CaseFailure]) -> Path:
        """Record the failures of one stage and rewrite ``failures.csv`` (every stage's, in stage order)."""
        self.write_csv(f"{STAGE_RECORDS}/failures-{stage}.csv", failure_table(failures))
        return self.write_csv(FAILURES, failure_table(self.read_failures()))

    def read_failures(self, *, before: str | None = None) -> list[CaseFailure]:
        """Failures recorded by every stage (or by the stages before ``before``), in stage order."""
        stages = STAGES if before is None else STAGES[: STAGES.index(before)]
        out: list[CaseFailure] = []
        for s in stages:
            p = self.path(f"{STAGE_RECORDS}/failures-{s}.csv")
            if p.is_file():
                table = pd.read_csv(p, dtype=str, keep_default_na=False)
                out.extend(CaseFailure(**{c: r[c] for c in FAILURE_COLUMNS if c in r}) for r in table.to_dict("records"))
        return out

    def write_image_warnings(self, rows: Sequence[tuple[str, str, str]]) -> Path:
        """Write ``image_warnings.csv``: one (case_id, site, warning) row per warning of the checks stage."""
        return self.write_csv(IMAGE_WARNINGS, pd.DataFrame(list(rows), columns=list(IMAGE_WARNING_COLUMNS)))

    def read_image_warnings(self) -> pd.DataFrame:
        """``image_warnings.csv`` as text columns; an empty table when the checks stage did not run (metric-table input)."""
        if not self.has(IMAGE_WARNINGS):
            return pd.DataFrame(columns=list(IMAGE_WARNING_COLUMNS), dtype=str)
        return pd.read_csv(self.path(IMAGE_WARNINGS), dtype=str, keep_default_na=False)

    def write_tables(self, tables: Mapping[str, pd.DataFrame]) -> list[Path]:
        """Write each table to ``tables/<name>.csv`` (and ``.parquet`` when pyarrow is installed), atomically."""
        written = []
        for name, table in tables.items():
            written.append(self.write_csv(f"{TABLES}/{name}.csv", table))
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                logger.info("pyarrow not installed: %s written as CSV only", name)
                continue
            text = table.astype({c: "string" for c in table.columns if table[c].dtype == object})
            written.append(atomic_write(self.path(f"{TABLES}/{name}.parquet"), lambda fh, t=text: t.to_parquet(fh, index=False), binary=True))
        return written

    # ---- documents -----------------------------------------------------------------------------
    def write_protocol(self, text: str) -> Path:
        """Write ``protocol.yaml`` (the canonical YAML of the protocol being run)."""
        return atomic_write_text(self.path(PROTOCOL), text)

    def write_model(self, identity: Mapping[str, Any]) -> Path:
        """Write ``model.json``: name, kind, sha256, device and label map of the audited model."""
        return atomic_write_text(self.path(MODEL), json.dumps(dict(identity), indent=1, sort_keys=True))

    def read_model(self) -> dict[str, Any]:
        """``model.json`` (see :meth:`write_model`)."""
        self.require(MODEL)
        return json.loads(self.path(MODEL).read_text(encoding="utf-8"))

    def write_results(self, document: Mapping[str, Any]) -> Path:
        """Validate ``results.json`` against its schema (docs/report.md) and write it.

        Raises
        ------
        ValueError
            Listing the schema problems; nothing is written then.
        """
        from audit import provenance
        from audit.report.schema import validate_results

        text = provenance.dumps(document)
        problems = validate_results(json.loads(text))
        if problems:
            raise ValueError("results.json would not match its schema: " + "; ".join(problems))
        return atomic_write_text(self.results_path, text)

    def read_results(self) -> dict[str, Any]:
        """``results.json``."""
        self.require(RESULTS)
        return json.loads(self.results_path.read_text(encoding="utf-8"))

    def require(self, *names: str) -> None:
        """Raise :class:`RunFolderError` naming the first missing member and the stage that writes it."""
        for name in names:
            if not self.has(name):
                stage = next((s for s, outs in STAGE_OUTPUTS.items() if name in outs), None)
                hint = f"; run the audit through the {stage} stage first" if stage else ""
                raise RunFolderError(f"run folder {self.root} has no {name}{hint}")
