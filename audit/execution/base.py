"""The executor interface shared by the local and the dask back ends."""

from __future__ import annotations

import abc
import copyreg
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["Job", "OnError", "Executor", "WorkerLostError", "call_job"]


# Frozen mappings (label maps, settings) travel to worker processes as their plain dict, rebuilt read-only there:
# without this, a LabelMap cannot be pickled and every case failed with workers > 1.
def _mapping_proxy(data: dict[Any, Any]) -> types.MappingProxyType:
    return types.MappingProxyType(data)


copyreg.pickle(types.MappingProxyType, lambda m: (_mapping_proxy, (dict(m),)))


#: One unit of work: positional and keyword arguments of the mapped function.
Job = tuple[tuple[Any, ...], dict[str, Any]]
#: ``on_error(index, job, exception) -> result``: turns an infrastructure error into a result (a failure record).
OnError = Callable[[int, Job, BaseException], Any]


class WorkerLostError(RuntimeError):
    """A job whose worker died every time it ran (the job may be what kills it)."""


def call_job(fn: Callable[..., Any], job: Job) -> Any:
    """Call ``fn(*args, **kwargs)`` for ``job == (args, kwargs)`` (module level, so it pickles)."""
    args, kwargs = job
    return fn(*args, **kwargs)


class Executor(abc.ABC):
    """Runs independent per-case jobs and yields their results **in input order**.

    Attributes
    ----------
    kind : str
        ``"serial"``, ``"processes"`` or ``"dask"``.
    workers : int
        Worker processes (for a remote cluster: the workers connected when it was opened).
    """

    kind: str = ""
    workers: int = 1

    @abc.abstractmethod
    def map(
        self,
        fn: Callable[..., Any],
        jobs: Iterable[Job],
        *,
        on_error: OnError | None = None,
        resources: dict[str, float] | None = None,
    ) -> Iterator[Any]:
        """Yield ``fn(*args, **kwargs)`` for each job, in input order.

        Parameters
        ----------
        fn : callable
            A picklable, module-level function; per-case problems should come back as failure records.
        jobs : iterable of (args, kwargs)
            One entry per case.
        on_error : callable, optional
            Called as ``on_error(index, job, exc)`` when a job raises or its worker is lost for good; its
            return value takes the job's place. Without it the exception propagates.
        resources : dict, optional
            Abstract worker resources each job needs (dask only, e.g. ``{"GPU": 1}``).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release pools, clients and clusters this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
