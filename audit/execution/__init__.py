"""Running independent per-case work: in this process, on a local process pool, or on dask.distributed.

Everything up to the metric table is independent per case (DESIGN.md), so it parallelizes by case.
Results come back in input order whatever the completion order, so outputs never depend on where the
work ran. The protocol's ``execution`` section (:class:`ExecutionSettings`) picks the back end:

* default: serial for one worker, a local process pool for more (no dask import);
* ``cluster: dask``: a local ``distributed.LocalCluster``;
* ``scheduler: tcp://host:8786``: any running dask.distributed cluster;
* ``cluster: slurm``: dask workers submitted as SLURM jobs (optional dask-jobqueue).

Example
-------
>>> def add(x, *, y):
...     return x + y
>>> with open_executor(ExecutionSettings(), workers=1) as ex:
...     list(ex.map(add, [((1,), {"y": 2}), ((3,), {"y": 4})]))
[3, 7]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from audit.execution.base import Executor, Job, OnError, WorkerLostError, call_job
from audit.execution.local import ProcessExecutor, SerialExecutor
from audit.execution.settings import CLUSTERS, ExecutionSettings, SlurmSettings, validate_execution

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTERS",
    "Executor",
    "ExecutionSettings",
    "Job",
    "OnError",
    "ProcessExecutor",
    "SerialExecutor",
    "SlurmSettings",
    "WorkerLostError",
    "call_job",
    "map_cases",
    "open_executor",
    "validate_execution",
]

R = TypeVar("R")


def open_executor(settings: ExecutionSettings | None = None, *, workers: int = 1) -> Executor:
    """Start the executor the settings describe (close it, or use it as a context manager).

    Parameters
    ----------
    settings : ExecutionSettings, optional
        The protocol's ``execution`` section (default: local).
    workers : int
        Worker count when ``settings.workers`` is not set (the command line's ``--workers``).

    Raises
    ------
    ValueError
        For invalid settings (the message names the field).
    ImportError
        For ``cluster: slurm`` without dask-jobqueue (the message says how to install it).
    OSError
        When a ``scheduler`` address cannot be reached.
    """
    settings = settings or ExecutionSettings()
    problems = validate_execution(settings)
    if workers < 1:
        problems.append(f"workers: must be at least 1; found {workers}")
    if problems:
        raise ValueError("; ".join(problems))
    n = settings.workers or workers
    if settings.scheduler is not None:
        from audit.execution.distributed import DaskExecutor

        executor: Executor = DaskExecutor.connect(settings.scheduler)
    elif settings.cluster == "dask":
        from audit.execution.distributed import DaskExecutor

        executor = DaskExecutor.local(settings, n)
    elif settings.cluster == "slurm":
        from audit.execution.distributed import start_slurm_cluster

        executor = start_slurm_cluster(settings, n)
    elif n == 1:
        executor = SerialExecutor()
    else:
        executor = ProcessExecutor(n)
    logger.info("executor: %s with %d worker(s)", executor.kind, executor.workers)
    return executor


def map_cases(
    fn: Callable[..., R],
    jobs: Iterable[Job],
    *,
    workers: int = 1,
    executor: Executor | None = None,
    on_error: OnError | None = None,
) -> Iterator[R]:
    """Apply ``fn(*args, **kwargs)`` to each job, in input order.

    Parameters
    ----------
    fn : callable
        A picklable, module-level function that never raises for a bad case (it returns a failure record).
    jobs : iterable of (args, kwargs)
        One entry per case.
    workers : int
        Without ``executor``: 1 runs in this process; more uses a local process pool.
    executor : Executor, optional
        An open executor (from :func:`open_executor`); ``workers`` is then ignored.
    on_error : callable, optional
        See :meth:`Executor.map`.

    Examples
    --------
    >>> list(map_cases(divmod, [((7, 2), {}), ((9, 4), {})]))
    [(3, 1), (2, 1)]
    """
    if executor is not None:
        yield from executor.map(fn, jobs, on_error=on_error)
        return
    if workers < 1:
        raise ValueError(f"workers: must be at least 1; found {workers}")
    with open_executor(ExecutionSettings(), workers=workers) as own:
        yield from own.map(fn, jobs, on_error=on_error)
