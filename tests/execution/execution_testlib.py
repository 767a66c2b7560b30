"""Module-level task functions for the executor tests (worker processes import them by name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def square_plus(x: int, *, offset: int = 0) -> int:
    """A pure task: ``x * x + offset``."""
    return x * x + offset


def square_with_pid(x: int) -> tuple[int, int]:
    """``x * x`` and the id of the process that computed it."""
    return x * x, os.getpid()


def kill_worker_once(x: int, *, marker: str, victim: int) -> tuple[int, int]:
    """Kill the worker process (SIGKILL, as the out-of-memory killer would) the first time job ``victim`` runs.

    The marker file records that the kill happened, so the rerun of the job succeeds.
    """
    if x == victim and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return square_with_pid(x)


def always_kill_worker(x: int) -> int:
    """A job that kills every worker it runs on."""
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def raise_for_odd(x: int) -> int:
    """Raises ``ValueError`` naming ``x`` for odd values."""
    if x % 2:
        raise ValueError(f"odd value {x}")
    return x


def kill_once_then(fn_name: str, *args: Any, marker: str, **kwargs: Any) -> Any:
    """Kill this worker the first time (marker file absent), else call ``audit.evaluate.<fn_name>``."""
    if not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    import audit.evaluate

    return getattr(audit.evaluate, fn_name)(*args, **kwargs)


def unpicklable_result_for_two(x: int) -> Any:
    """``x``, except for 2: a generator, which cannot be pickled back to the parent process."""
    if x == 2:
        return (i for i in range(3))
    return x
