"""Executors on this machine: in-process (serial) and a local process pool.

Both keep input order whatever the completion order, so outputs never depend on the worker count. The
process pool survives a killed worker process: the pool is rebuilt and the cases that were in flight run
again (each case at most ``max_attempts`` times, like dask's ``allowed-failures``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from audit.execution.base import Executor, Job, OnError, WorkerLostError, call_job

logger = logging.getLogger(__name__)

__all__ = ["SerialExecutor", "ProcessExecutor"]


class SerialExecutor(Executor):
    """Runs every job in this process, one after the other (``workers == 1``).

    Examples
    --------
    >>> with SerialExecutor() as ex:
    ...     list(ex.map(divmod, [((7, 2), {}), ((9, 4), {})]))
    [(3, 1), (2, 1)]
    """

    kind = "serial"

    def __init__(self) -> None:
        self.workers = 1

    def map(
        self,
        fn: Callable[..., Any],
        jobs: Iterable[Job],
        *,
        on_error: OnError | None = None,
        resources: dict[str, float] | None = None,
    ) -> Iterator[Any]:
        for i, job in enumerate(jobs):
            try:
                yield call_job(fn, job)
            except Exception as exc:
                if on_error is None:
                    raise
                yield on_error(i, job, exc)


class ProcessExecutor(Executor):
    """A local :class:`~concurrent.futures.ProcessPoolExecutor` with ordered, bounded, crash-tolerant map.

    Parameters
    ----------
    workers : int
        Worker processes (at least 2; use :class:`SerialExecutor` for one).
    max_attempts : int
        How often a case may be in flight when a worker process dies before it is given up
        (:class:`~audit.execution.base.WorkerLostError`, passed to ``on_error``).
    """

    kind = "processes"

    def __init__(self, workers: int, *, max_attempts: int = 3) -> None:
        if workers < 2:
            raise ValueError(f"workers: a process pool needs at least 2; found {workers}")
        self.workers = workers
        self.max_attempts = max_attempts
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def map(
        self,
        fn: Callable[..., Any],
        jobs: Iterable[Job],
        *,
        on_error: OnError | None = None,
        resources: dict[str, float] | None = None,
    ) -> Iterator[Any]:
        source = enumerate(jobs)
        window = 4 * self.workers
        inflight: collections.deque[tuple[int, Job, Future[Any]]] = collections.deque()
        attempts: dict[int, int] = {}
        exhausted = False

        def submit(i: int, job: Job) -> None:
            try:
                fut = self._get_pool().submit(_call_pickled, cloudpickle.dumps((fn, job)))
            except BrokenProcessPool as exc:  # the pool broke since the last result: recovered below
                fut = Future()
                fut.set_exception(exc)
            else:
                attempts[i] = attempts.get(i, 0) + 1
            inflight.append((i, job, fut))

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and len(inflight) < window:
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                else:
                    submit(*nxt)

        refill()
        while inflight:
            i, job, fut = inflight[0]
            try:
                result = fut.result()
            except BrokenProcessPool:
                # a worker process died (killed, out of memory, segfault): rerun what it took down
                pending = list(inflight)
                inflight.clear()
                self._restart()
                lost = [j for j, _, f in pending if not _succeeded(f)]
                logger.warning("a worker process died; rerunning %d in-flight cases on a new pool", len(lost))
                for j, jb, f in pending:
                    if _succeeded(f):
                        inflight.append((j, jb, f))
                    elif attempts.get(j, 0) >= self.max_attempts:
                        exc = WorkerLostError(f"job {j}: a worker process died each of the {attempts.get(j, 0)} times it ran")
                        if on_error is None:
                            raise exc from None
                        inflight.append((j, jb, _done(on_error(j, jb, exc))))
                    else:
                        submit(j, jb)
                continue
            except Exception as exc:
                if on_error is None:
                    raise
                result = on_error(i, job, exc)
            inflight.popleft()
            refill()
            yield result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _call_pickled(payload: bytes) -> Any:
    """Run a job sent with cloudpickle (which also carries mapping proxies and closures of frozen specs)."""
    fn, job = cloudpickle.loads(payload)
    return call_job(fn, job)


def _succeeded(fut: Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut
