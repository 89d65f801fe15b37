"""Tests of the Dask lane's sliding-window map, run with an in-process chunk runner."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._exceptions import UnpicklableError
from resource_supervisor.broker._dask_map import apply_chunk, grow_chunksize, map_window
from tests import _dask_workers as w

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


class Runner:
    """Runs chunks in this process, recording chunk sizes and the peak in flight."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sizes: list[int] = []
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, func: Callable[[int], int], chunk: list[int]) -> list[int]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.sizes.append(len(chunk))
        try:
            await anyio.sleep(self.delay * len(chunk))
            return apply_chunk(func, chunk)
        finally:
            self.in_flight -= 1


@given(
    current=st.integers(1, 10_000),
    items=st.integers(0, 10_000),
    seconds=st.floats(0.0, 10.0),
    target=st.floats(0.001, 1.0),
)
def test_chunksize_grows_at_most_fourfold_and_never_shrinks(
    current: int, items: int, seconds: float, target: float
) -> None:
    """The next size lies between the present one and four times it."""
    size = grow_chunksize(current, items, seconds, target)
    assert current <= size <= max(current, min(4 * current, 100_000))


def test_chunksize_stops_growing_at_the_target() -> None:
    """A chunk that took the target time or longer keeps its size; a fast one grows."""
    assert grow_chunksize(8, 8, 0.2, 0.1) == 8
    assert grow_chunksize(8, 8, 0.01, 0.1) == 32


async def test_ordered_window_is_bounded_and_in_order() -> None:
    """Ordered results come in input order with at most max_in_flight chunks running."""
    runner = Runner(delay=0.001)
    stream = map_window(
        runner,
        w.square,
        range(50),
        ordered=True,
        chunksize=3,
        max_in_flight=2,
        target_chunk_seconds=0.1,
    )
    assert [x async for x in stream] == [i * i for i in range(50)]
    assert runner.peak <= 2
    assert set(runner.sizes[:-1]) == {3}


async def test_async_items_and_growing_chunks() -> None:
    """An async iterable is accepted; without chunksize, chunks grow from 1."""

    async def items() -> AsyncIterator[int]:
        for i in range(300):
            yield i

    runner = Runner()
    stream = map_window(
        runner,
        w.square,
        items(),
        ordered=False,
        chunksize=None,
        max_in_flight=2,
        target_chunk_seconds=0.05,
    )
    assert sorted([x async for x in stream]) == [i * i for i in range(300)]
    assert runner.sizes[0] == 1
    assert max(runner.sizes) > 1


async def test_first_error_is_raised_bare_and_rest_cancelled() -> None:
    """A chunk's error is raised as itself; the chunks still in flight are cancelled."""
    runner = Runner(delay=0.001)
    with pytest.raises(KeyError):
        async for _ in map_window(
            runner,
            w.square_or_fail,
            range(100),
            ordered=True,
            chunksize=2,
            max_in_flight=3,
            target_chunk_seconds=0.1,
        ):
            pass
    assert runner.in_flight == 0


async def test_unpicklable_item_fails_before_its_chunk_runs() -> None:
    """An item stdlib pickle refuses raises UnpicklableError; its chunk never runs."""
    runner = Runner()
    items: list[int] = [threading.Lock()]  # type: ignore[list-item]
    with pytest.raises(UnpicklableError):
        async for _ in map_window(
            runner,
            w.square,
            items,
            ordered=True,
            chunksize=1,
            max_in_flight=1,
            target_chunk_seconds=0.1,
        ):
            pass
    assert runner.sizes == []
