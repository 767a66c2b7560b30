"""Running independent per-case work serially or on a local process pool.

Everything up to the metric table is independent per case (DESIGN.md), so it parallelizes by case.
Results come back in input order whatever the completion order, so outputs do not depend on ``workers``.
"""

from __future__ import annotations

import copyreg
import logging
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

# Frozen mappings (label maps, settings) travel to worker processes as their plain dict, rebuilt read-only there:
# without this, a LabelMap cannot be pickled and every case failed with workers > 1.
def _mapping_proxy(data: dict[Any, Any]) -> types.MappingProxyType:
    return types.MappingProxyType(data)


copyreg.pickle(types.MappingProxyType, lambda m: (_mapping_proxy, (dict(m),)))

__all__ = ["map_cases"]

T = TypeVar("T")
R = TypeVar("R")


def _call(packed: tuple[Callable[..., R], tuple[Any, ...], dict[str, Any]]) -> R:
    fn, args, kwargs = packed
    return fn(*args, **kwargs)


def map_cases(
    fn: Callable[..., R],
    jobs: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    workers: int = 1,
    chunksize: int = 4,
) -> Iterator[R]:
    """Apply ``fn(*args, **kwargs)`` to each job, in input order.

    Parameters
    ----------
    fn : callable
        A picklable, module-level function that never raises for a bad case (it returns a failure record).
    jobs : iterable of (args, kwargs)
        One entry per case.
    workers : int
        1 runs in this process; more uses a :class:`~concurrent.futures.ProcessPoolExecutor`.
    chunksize : int
        Cases sent to a worker at a time.
    """
    if workers < 1:
        raise ValueError(f"workers: must be at least 1; found {workers}")
    packed = ((fn, args, kwargs) for args, kwargs in jobs)
    if workers == 1:
        yield from map(_call, packed)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_call, packed, chunksize=chunksize)
