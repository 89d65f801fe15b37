"""
Type-only checks of the executor facade's call-forwarding signatures (mypy, never run).

Good calls keep the callable's types (``assert_type``); calls that must be rejected
carry ``# type: ignore[code]``, and strict mode's ``warn_unused_ignores`` proves
that mypy rejects them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import assert_type

from resource_supervisor.broker import Executors, ThreadLane


def read_file(path: str, limit: int) -> bytes:
    return path.encode()[:limit]


def square(x: int) -> int:
    return x * x


def no_args() -> float:
    return 1.0


async def good_calls(ex: Executors, lane: ThreadLane) -> None:
    assert_type(await ex.run_in_thread(read_file, "a", 3), bytes)
    assert_type(await ex.run_in_thread(no_args), float)
    assert_type(await ex.run_in_thread(read_file, "a", 3, abandon_on_cancel=True), bytes)
    assert_type(await ex.run_in_thread(functools.partial(read_file, limit=3), "a"), bytes)
    assert_type(await ex.run_in_process(square, 4), int)
    assert_type(await ex.run_in_process(square, 4, timeout=2.5), int)
    assert_type(await lane.run(read_file, "a", 3), bytes)
    assert_type(ex.map_in_processes(square, [1, 2, 3]), AsyncIterator[int])
    assert_type(
        ex.map_in_processes(square, range(3), ordered=False, chunksize=2), AsyncIterator[int]
    )


async def rejected_calls(ex: Executors, lane: ThreadLane) -> None:
    await ex.run_in_thread(read_file, 1, 3)  # type: ignore[arg-type]
    await ex.run_in_thread(read_file, "a")  # type: ignore[arg-type]
    await ex.run_in_thread(read_file, "a", 3, 4)  # type: ignore[arg-type]
    await ex.run_in_thread(read_file, "a", limit=3)  # type: ignore[arg-type, call-arg]
    await ex.run_in_process(square, "4")  # type: ignore[arg-type]
    await ex.run_in_process(square, x=4)  # type: ignore[arg-type, call-arg]
    await ex.run_in_process(square, 4, timeout="soon")  # type: ignore[arg-type]
    await lane.run(square, 4, abandon_on_cancel=None)  # type: ignore[arg-type]
    ex.map_in_processes(square, ["a"])  # type: ignore[arg-type]
    ex.map_in_processes(square, [1], True)  # type: ignore[call-arg]
    result: str = await ex.run_in_thread(square, 2)  # type: ignore[arg-type]
    del result
