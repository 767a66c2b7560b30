"""Executing per-case work on dask.distributed: a local cluster, any running scheduler, or SLURM jobs.

dask reruns the tasks of a worker that dies (up to ``distributed.scheduler.allowed-failures`` times, 3 by
default); a task that keeps killing workers fails with ``KilledWorker``, which ``on_error`` turns into a
recorded case failure. Results come back in input order, so a dask run equals a serial run.

dask-jobqueue is optional: ``pip install dask-jobqueue`` (or the ``slurm`` extra) for ``cluster: slurm``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from audit.errors import UserError
from audit.execution.base import Executor, Job, OnError, call_job
from audit.execution.settings import ExecutionSettings, SlurmSettings

logger = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "JOBQUEUE_INSTALL_HINT", "MissingDependencyError", "slurm_cluster_kwargs", "start_slurm_cluster"]

JOBQUEUE_INSTALL_HINT = (
    "execution.cluster: 'slurm' needs the optional package dask-jobqueue; install it with "
    "`pip install dask-jobqueue` (or `pip install spine-audit[slurm]`)"
)
#: Tasks kept in flight per worker; bounds scheduler memory for very large audits.
TASKS_IN_FLIGHT_PER_WORKER = 16


class SchedulerUnreachableError(UserError, OSError):
    """``execution.scheduler`` names an address where no dask scheduler answers."""


class DaskExecutor(Executor):
    """Map jobs over a ``distributed.Client``.

    Parameters
    ----------
    client : distributed.Client
        Connected client.
    cluster : object, optional
        A cluster this executor started and therefore closes (``None`` for a scheduler it only joined).
    """

    kind = "dask"

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self.client = client
        self.cluster = cluster
        self.workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        self._batch = 0

    @classmethod
    def local(cls, settings: ExecutionSettings, workers: int) -> DaskExecutor:
        """Start a :class:`distributed.LocalCluster` of ``workers`` processes (no dashboard)."""
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=settings.threads_per_worker,
            processes=True,
            memory_limit=settings.memory_limit,
            dashboard_address=":0",  # a free port: never collide with another cluster on 8787
        )
        return cls(Client(cluster), cluster)

    @classmethod
    def connect(cls, address: str, *, timeout: float = 30.0) -> DaskExecutor:
        """Join a running scheduler; raises ``OSError`` naming the address when it cannot be reached."""
        from distributed import Client

        try:
            client = Client(address, timeout=timeout)
        except OSError as exc:
            raise SchedulerUnreachableError(f"execution.scheduler: cannot reach the dask scheduler at {address!r}: {exc}") from exc
        return cls(client)

    def map(
        self,
        fn: Callable[..., Any],
        jobs: Iterable[Job],
        *,
        on_error: OnError | None = None,
        resources: dict[str, float] | None = None,
    ) -> Iterator[Any]:
        self._batch += 1
        prefix = f"spine-audit-{getattr(fn, '__name__', 'job')}-{id(self):x}-{self._batch}"
        window = TASKS_IN_FLIGHT_PER_WORKER * max(self.workers, len(self.client.scheduler_info(n_workers=-1).get("workers", {})), 1)
        source = enumerate(jobs)
        inflight: collections.deque[tuple[int, Job, Any]] = collections.deque()
        exhausted = False

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and len(inflight) < window:
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                    return
                i, job = nxt
                fut = self.client.submit(call_job, fn, job, key=f"{prefix}-{i}", pure=False, resources=resources)
                inflight.append((i, job, fut))

        refill()
        try:
            while inflight:
                i, job, fut = inflight.popleft()
                try:
                    result = fut.result()
                except Exception as exc:
                    if on_error is None:
                        raise
                    result = on_error(i, job, exc)
                finally:
                    fut.release()
                refill()
                yield result
        finally:
            for _, _, fut in inflight:
                fut.cancel()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class MissingDependencyError(UserError, ImportError):
    """An optional package the settings need is not installed (the message says how to install it)."""


def slurm_cluster_kwargs(settings: ExecutionSettings) -> dict[str, Any]:
    """Translate the protocol's ``execution.slurm`` section into ``dask_jobqueue.SLURMCluster`` arguments.

    A job with GPUs gets ``--gres=gpu:<n>`` and one worker per GPU; every worker advertises ``GPU=1`` so
    inference tasks (which ask for it) run one at a time per worker, next to its one loaded model.

    Examples
    --------
    >>> kw = slurm_cluster_kwargs(ExecutionSettings(cluster="slurm", slurm=SlurmSettings(queue="gpu", gpus=2, cores=8)))
    >>> kw["queue"], kw["processes"], kw["job_extra_directives"], kw["worker_extra_args"]
    ('gpu', 2, ['--gres=gpu:2'], ['--resources', 'GPU=1'])
    """
    s: SlurmSettings = settings.slurm
    processes = s.gpus if s.gpus else s.processes
    kwargs: dict[str, Any] = {
        "cores": s.cores,
        "memory": s.memory,
        "processes": processes,
        "walltime": s.walltime,
        "job_extra_directives": list(s.job_extra_directives) + ([f"--gres=gpu:{s.gpus}"] if s.gpus else []),
        "job_script_prologue": list(s.job_script_prologue),
        "worker_extra_args": ["--resources", "GPU=1"] if s.gpus else [],
    }
    optional = {
        "queue": s.queue,
        "account": s.account,
        "local_directory": s.local_directory,
        "log_directory": s.log_directory,
        "python": s.python,
        "interface": s.interface,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def start_slurm_cluster(settings: ExecutionSettings, jobs: int) -> DaskExecutor:
    """Start a ``dask_jobqueue.SLURMCluster`` with ``jobs`` worker jobs and connect to it.

    Raises
    ------
    ImportError
        With install instructions when dask-jobqueue is missing.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise MissingDependencyError(JOBQUEUE_INSTALL_HINT) from exc
    from distributed import Client

    cluster = SLURMCluster(**slurm_cluster_kwargs(settings))
    cluster.scale(jobs=jobs)
    logger.info("submitted %d SLURM worker jobs:\n%s", jobs, cluster.job_script())
    return DaskExecutor(Client(cluster), cluster)
