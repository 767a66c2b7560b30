"""The audit pipeline: protocol -> sites -> checks -> inference -> metrics -> stats -> report.

:func:`run_audit` validates the inputs, locks the run folder, opens the executor and runs the stage functions of
:mod:`audit.stages` from ``from_stage`` to ``until``; :class:`RunSummary` is what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from audit.execution import open_executor
from audit.protocol import Protocol, protocol_to_dict, validate_inputs
from audit.runfolder import STAGES, RunFolder
from audit.stages import STAGE_FUNCTIONS, ProgressCallback, StageContext, failed_case_ids, no_progress

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "RunSummary", "run_audit"]


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



def run_audit(
    protocol: Protocol,
    *,
    run_dir: str | Path,
    device: str = "auto",
    workers: int = 1,
    until: str = "report",
    from_stage: str = "sites",
    progress: ProgressCallback | None = None,
    command: str | None = None,
    sites: Sequence[str] = (),
) -> RunSummary:
    """Run the audit's stages ``from_stage`` .. ``until`` in ``run_dir`` (locked while running).

    Parameters
    ----------
    protocol : Protocol
        The validated protocol.
    run_dir : path
        The run folder (created on first write; relative paths are fine). Rerunning into the same folder
        reuses the cohort, cached predictions and cached per-case metrics; outputs of the rerun stages and of
        every later stage are removed first, so nothing stale remains.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    workers : int
        Worker processes for cohort generation, checks, inference and metrics (``execution.workers`` wins).
    until, from_stage : {"sites", "checks", "inference", "metrics", "stats", "report"}
        Last and first stage to run; a later ``from_stage`` needs the folder's earlier outputs (same protocol).
    progress : callable, optional
        ``progress(stage, done, total)``.
    command : str, optional
        The command line recorded in the provenance (defaults to ``sys.argv``).
    sites : sequence of str
        Run only these sites of the protocol (one site's part of a federated audit); empty: all.

    Raises
    ------
    ValueError
        For an unknown stage name.
    audit.runfolder.RunFolderError
        If ``from_stage`` needs outputs the folder lacks or the folder was written by another protocol.
    audit.fileio.LockedError
        If another run holds the folder.
    """
    for option, value in (("until", until), ("from", from_stage)):
        if value not in STAGES:
            raise ValueError(f"{option}: allowed values are {list(STAGES)}; found {value!r}")
    from audit.inference import model_spec_from_dict, vet_model

    t0 = time.perf_counter()
    validate_inputs(protocol)  # model path, site configs, roots, environment variables: before anything is written
    if protocol.input == "images":  # a metric-table audit has no model file
        vet_model(model_spec_from_dict(protocol.model, base_dir=Path(protocol.base_dir)))  # model trust checks, still before anything is written
    folder = RunFolder(run_dir)
    stages = STAGES[STAGES.index(from_stage) : STAGES.index(until) + 1]
    per_case = protocol.input == "images" and bool(set(stages) & {"checks", "inference", "metrics"})
    with folder.lock(), contextlib.ExitStack() as stack:
        # the executor starts only when a per-case stage runs (a dask or SLURM cluster is not free)
        executor = stack.enter_context(open_executor(protocol.execution, workers=workers)) if per_case else None
        ctx = StageContext(protocol=protocol, folder=folder, device=device, workers=workers, progress=progress or no_progress, command=command,
                           executor=executor, only_sites=tuple(sites))  # fmt: skip
        folder.begin(protocol_sha256=protocol.sha256, start=from_stage, until=until)
        folder.write_protocol(yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False))
        for stage in stages:
            extra = STAGE_FUNCTIONS[stage](ctx)
            folder.complete(stage, **(extra or {}))
        return _summary(folder, t0)


def _summary(folder: RunFolder, t0: float) -> RunSummary:
    decided: dict[str, str] = {}
    results_path = folder.results_path if folder.results_path.is_file() else None
    if results_path is not None:
        worst = {"fail": 2, "inconclusive": 1, "pass": 0}
        for rec in folder.read_results()["statistics"]["acceptance"]:
            if rec["id"] not in decided or worst[rec["status"]] > worst[decided[rec["id"]]]:
                decided[rec["id"]] = rec["status"]
    manifest = folder.read_manifest(resolve=False)
    return RunSummary(
        run_dir=folder.root,
        report_path=folder.report_path if folder.report_path.is_file() else None,
        results_path=results_path,
        n_cases=int(len(manifest)),
        n_failed=len(failed_case_ids(folder.read_failures())),
        duration_s=time.perf_counter() - t0,
        acceptance=tuple(decided.items()),
    )
