"""Local parallel execution keeps input order and equals the serial result."""

from __future__ import annotations

import pytest

from audit.execution import map_cases


def square_plus(x: int, *, offset: int = 0) -> int:
    """Module-level so worker processes can unpickle it."""
    return x * x + offset


def test_process_pool_matches_serial_in_input_order():
    jobs = [((i,), {"offset": 1}) for i in range(20)]
    serial = list(map_cases(square_plus, jobs, workers=1))
    parallel = list(map_cases(square_plus, jobs, workers=2, chunksize=3))
    assert serial == parallel == [i * i + 1 for i in range(20)]


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers: must be at least 1; found 0"):
        list(map_cases(square_plus, [], workers=0))
