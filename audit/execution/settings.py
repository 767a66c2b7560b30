"""The protocol's ``execution`` section: where per-case work runs.

Execution settings decide *where* cases run, never *what* is computed, so they are left out of the
protocol's sha256 (:func:`audit.protocol.protocol_sha256`): sites that run one protocol on different
clusters share its hash.

Example::

    execution:
      scheduler: tcp://10.1.2.3:8786     # any running dask.distributed cluster
    # or
    execution:
      cluster: slurm                     # dask-jobqueue starts the workers as SLURM jobs
      workers: 8
      slurm: {queue: gpu, walltime: "02:00:00", memory: 16GiB, gpus: 1}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

__all__ = ["CLUSTERS", "SCHEDULER_ADDRESS", "ExecutionSettings", "SlurmSettings", "validate_execution"]

#: What :func:`audit.execution.open_executor` starts when no ``scheduler`` address is given.
CLUSTERS: tuple[str, ...] = ("processes", "dask", "slurm")
#: A dask.distributed scheduler address (``tcp://host:port`` and the other comm protocols).
SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls|ucx|ws|wss|inproc)://\S+$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|kB|KB|KiB|MB|MiB|GB|GiB|TB|TiB)$")
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$")


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """Worker jobs for ``cluster: slurm`` (translated to ``dask_jobqueue.SLURMCluster`` arguments).

    Each job runs ``processes`` dask workers sharing ``cores`` and ``memory``. With ``gpus`` > 0 a job asks
    for ``--gres=gpu:<gpus>`` and starts one worker per GPU, each advertising the resource ``GPU=1``, so a
    worker holds one model and runs one inference at a time.
    """

    queue: str | None = None
    account: str | None = None
    cores: int = 4
    memory: str = "16GiB"
    processes: int = 1
    walltime: str = "01:00:00"
    gpus: int = 0
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    interface: str | None = None


@dataclasses.dataclass(frozen=True)
class ExecutionSettings:
    """Where per-case work (checks, inference, metrics) runs.

    Attributes
    ----------
    scheduler : str or None
        Address of a running dask.distributed scheduler (``tcp://host:8786``); overrides ``cluster``.
        Workers must see the data and the run folder under the same paths (a shared file system).
    cluster : {"processes", "dask", "slurm"}
        Without ``scheduler``: a local process pool (default), a local dask cluster, or dask workers
        submitted as SLURM jobs through dask-jobqueue (``pip install dask-jobqueue``).
    workers : int or None
        Worker processes (pool size, local dask workers, or SLURM jobs); ``None`` takes the command
        line's ``--workers``.
    threads_per_worker : int
        Threads per local dask worker.
    memory_limit : str
        Memory limit per local dask worker (``"auto"`` shares the machine's memory), e.g. ``"2GiB"``.
    slurm : SlurmSettings
        Job settings for ``cluster: slurm``.
    """

    scheduler: str | None = None
    cluster: Literal["processes", "dask", "slurm"] = "processes"
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    slurm: SlurmSettings = dataclasses.field(default_factory=SlurmSettings)


def validate_execution(settings: ExecutionSettings, *, path: str = "execution") -> list[str]:
    """Return one message per inconsistent setting (empty when valid); messages name the field path.

    Examples
    --------
    >>> validate_execution(ExecutionSettings(scheduler="tcp://10.0.0.5:8786"))
    []
    >>> validate_execution(ExecutionSettings(scheduler="10.0.0.5"))[0][:60]
    'execution.scheduler: expected a dask scheduler address such '
    """
    problems = []
    if settings.scheduler is not None and not SCHEDULER_ADDRESS.match(settings.scheduler):
        problems.append(
            f"{path}.scheduler: expected a dask scheduler address such as 'tcp://host:8786' "
            f"(protocols tcp, tls, ucx, ws, wss, inproc); found {settings.scheduler!r}"
        )
    if settings.workers is not None and settings.workers < 1:
        problems.append(f"{path}.workers: must be at least 1; found {settings.workers}")
    if settings.threads_per_worker < 1:
        problems.append(f"{path}.threads_per_worker: must be at least 1; found {settings.threads_per_worker}")
    if settings.memory_limit != "auto" and not _MEMORY.match(settings.memory_limit):
        problems.append(f"{path}.memory_limit: expected 'auto' or a size such as '2GiB'; found {settings.memory_limit!r}")
    s = settings.slurm
    where = f"{path}.slurm"
    for name in ("cores", "processes"):
        if getattr(s, name) < 1:
            problems.append(f"{where}.{name}: must be at least 1; found {getattr(s, name)}")
    if s.gpus < 0:
        problems.append(f"{where}.gpus: must be 0 or more; found {s.gpus}")
    if s.gpus and s.processes not in (1, s.gpus):
        problems.append(f"{where}.processes: with gpus={s.gpus} use one worker per GPU ({s.gpus}); found {s.processes}")
    if not _MEMORY.match(s.memory):
        problems.append(f"{where}.memory: expected a size such as '16GiB'; found {s.memory!r}")
    if not _WALLTIME.match(s.walltime):
        problems.append(f"{where}.walltime: expected [D-]HH:MM[:SS] such as '02:00:00'; found {s.walltime!r}")
    for i, line in enumerate(s.job_extra_directives):
        if "\n" in line:
            problems.append(f"{where}.job_extra_directives[{i}]: one directive per entry, no line breaks; found {line!r}")
    return problems
