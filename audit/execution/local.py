"""Executors on this machine: in-process (serial) and a local process pool.

Both keep input order whatever the completion order, so outputs never depend on the worker count. The
process pool sends jobs in chunks (one pickle and one round trip per few cases) and survives a killed worker
process: the pool is rebuilt and the cases that were in flight run again one at a time (a case that kills
its worker each time is given up after ``max_attempts`` runs alone, like dask's ``allowed-failures``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from audit.execution.base import Executor, Job, OnError, WorkerLostError, call_job

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNKSIZE", "SerialExecutor", "ProcessExecutor", "guided_chunksize"]


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


#: Largest number of jobs sent to a worker process together (one pickle, one round trip). Shared arguments (label
#: maps, settings) are pickled once per chunk (docs/performance.md).
DEFAULT_CHUNKSIZE = 4


@dataclasses.dataclass
class _Chunk:
    """Consecutive jobs sent to one worker process, and the future of their outcomes."""

    items: list[tuple[int, Job]]
    future: Future[list[tuple[bool, Any]]]


class ProcessExecutor(Executor):
    """A local :class:`~concurrent.futures.ProcessPoolExecutor` with ordered, bounded, chunked, crash-tolerant map.

    Jobs travel in chunks of ``chunksize`` consecutive jobs (one pickle and one round trip per chunk); results
    are yielded one by one in input order, identical to a serial run. When a worker process dies, the jobs
    in flight are rerun one at a time, so a job that kills its worker takes no other job with it.

    Parameters
    ----------
    workers : int
        Worker processes (at least 2; use :class:`SerialExecutor` for one).
    max_attempts : int
        How often a job may kill its worker process while running alone before it is given up
        (:class:`~audit.execution.base.WorkerLostError`, passed to ``on_error``). After a worker dies, every job
        that was in flight is rerun alone (nothing else in flight), so only the job that kills its worker is
        charged; the others run again once and succeed.
    chunksize : int
        Largest number of jobs per chunk (:data:`DEFAULT_CHUNKSIZE`). Once the end of ``jobs`` is in sight, chunks
        shrink (:func:`guided_chunksize`) so the workers finish together; a run of under ``8 x workers`` jobs
        goes one job per chunk.

    Examples
    --------
    >>> with ProcessExecutor(2, chunksize=3) as ex:
    ...     list(ex.map(divmod, [((n, 4), {}) for n in range(7)]))
    [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    """

    kind = "processes"

    def __init__(self, workers: int, *, max_attempts: int = 3, chunksize: int = DEFAULT_CHUNKSIZE) -> None:
        if workers < 2:
            raise ValueError(f"workers: a process pool needs at least 2; found {workers}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize: must be a positive integer; found {chunksize!r}")
        self.workers = workers
        self.max_attempts = max_attempts
        self.chunksize = chunksize
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
        window = 4 * self.workers  # chunks in flight: every worker busy while the head chunk is awaited
        inflight: collections.deque[_Chunk] = collections.deque()
        ahead: collections.deque[tuple[int, Job]] = collections.deque()  # read from ``jobs``, not yet submitted
        exhausted = False

        def submit(items: list[tuple[int, Job]]) -> _Chunk:
            try:
                fut = self._get_pool().submit(_call_chunk, cloudpickle.dumps((fn, [job for _, job in items])))
            except BrokenProcessPool as exc:  # the pool broke since the last result: recovered below
                fut = Future()
                fut.set_exception(exc)
            return _Chunk(items, fut)

        def refill() -> None:
            nonlocal exhausted
            while len(inflight) < window:
                while not exhausted and len(ahead) < window * self.chunksize:  # look ahead far enough to see the end coming
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                    else:
                        ahead.append(nxt)
                if not ahead:
                    return
                size = self.chunksize if not exhausted else guided_chunksize(len(ahead), self.workers, self.chunksize)
                inflight.append(submit([ahead.popleft() for _ in range(min(size, len(ahead)))]))

        refill()
        while inflight:
            chunk = inflight[0]
            try:
                outcomes = chunk.future.result()
            except BrokenProcessPool:
                # a worker process died (killed, out of memory, segfault): every unfinished job is rerun alone, so the
                # job that kills its worker is found and charged, and no other job is
                pending = list(inflight)
                inflight.clear()
                self._restart()
                lost = [c for c in pending if not _succeeded(c.future)]
                logger.warning("a worker process died; rerunning the %d cases in flight one at a time", sum(len(c.items) for c in lost))
                for c in pending:
                    inflight.append(c if _succeeded(c.future) else _Chunk(c.items, _done([self._run_alone(fn, i, job) for i, job in c.items])))
                continue
            except Exception as exc:
                if len(chunk.items) > 1:  # the chunk as a whole failed (e.g. an unpicklable result): retry its jobs one by one
                    inflight.popleft()
                    inflight.extendleft(reversed([submit([item]) for item in chunk.items]))
                    continue
                outcomes = [(False, exc)]
            inflight.popleft()
            refill()
            for (i, job), (ok, value) in zip(chunk.items, outcomes):
                if ok:
                    yield value
                elif on_error is None:
                    raise value
                else:
                    yield on_error(i, job, value)

    def _run_alone(self, fn: Callable[..., Any], i: int, job: Job) -> tuple[bool, Any]:
        """Run one job with nothing else in flight, up to ``max_attempts`` times while its worker dies."""
        for _ in range(self.max_attempts):
            fut = self._get_pool().submit(_call_chunk, cloudpickle.dumps((fn, [job])))
            try:
                return fut.result()[0]
            except BrokenProcessPool:
                self._restart()
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled: this job's error
                return False, exc
        return False, WorkerLostError(f"job {i}: a worker process died each of the {self.max_attempts} times it ran alone")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def guided_chunksize(remaining: int, workers: int, largest: int) -> int:
    """Jobs in the next chunk once ``remaining`` jobs are left: ``remaining // (4 * workers)``, from 1 to ``largest``.

    Chunks shrink towards the end so the workers finish together (a short run, or a run of heavy cases, goes one
    job per chunk).

    Examples
    --------
    >>> [guided_chunksize(n, 2, 4) for n in (100, 32, 20, 8, 1)]
    [4, 4, 2, 1, 1]
    """
    return max(1, min(largest, remaining // (4 * workers)))


def _call_chunk(payload: bytes) -> list[tuple[bool, Any]]:
    """Run a chunk of jobs sent with cloudpickle (which also carries mapping proxies and closures of frozen specs).

    Returns ``(True, result)`` or ``(False, exception)`` per job, so one raising job does not hide the others'
    results; an exception that cannot travel back is replaced by a ``RuntimeError`` naming it.
    """
    fn, jobs = cloudpickle.loads(payload)
    out: list[tuple[bool, Any]] = []
    for job in jobs:
        try:
            out.append((True, call_job(fn, job)))
        except Exception as exc:  # noqa: BLE001 - handed to the caller's on_error in the parent process
            if hasattr(exc, "add_note"):  # Python 3.11+: the worker's traceback travels with the exception
                exc.add_note(f"in worker process {os.getpid()}:\n{traceback.format_exc()}")
            out.append((False, _portable(exc)))
    return out


def _portable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling problem
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _succeeded(fut: Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut
