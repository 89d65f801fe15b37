"""Tests of the chunked async map: the pure chunk sizer, in-process runs, and real workers."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._exceptions import WorkerCrashedError
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._mapping import (
    apply_chunk,
    finishing_chunksize,
    map_chunked,
    next_chunksize,
)
from tests import _workers
from tests._settings import lane_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

pytestmark = pytest.mark.timeout(60)


async def _in_process(func: Callable[..., object], args: tuple[object, ...]) -> object:
    """A backend run() that runs the call right here (the mapping layer is generic)."""
    await anyio.lowlevel.checkpoint()
    return func(*args)


@given(
    current=st.integers(1, 100_000),
    items=st.integers(0, 100_000),
    seconds=st.floats(0, 10),
    target=st.floats(0.001, 1),
)
def test_next_chunksize_bounds(current: int, items: int, seconds: float, target: float) -> None:
    """The next size is at least 1, at most 8x the current one, and never above the cap."""
    size = next_chunksize(
        current=current, items=items, seconds=seconds, target_chunk_seconds=target,
        max_chunksize=65536,
    )  # fmt: skip
    assert 1 <= size <= max(1, min(65536, 8 * current))


def test_next_chunksize_aims_at_target() -> None:
    """A chunk of 100 items that took 10 ms aims at 200 items for a 20 ms target."""
    assert next_chunksize(current=100, items=100, seconds=0.01, target_chunk_seconds=0.02) == 200


def _finish_times(chunk: int, rest: int, workers: int, ahead: list[float]) -> list[float]:
    """Lay out *ahead*, the new chunk and then *rest* one-second items greedily on workers."""
    free = [0.0] * workers
    for seconds in [*ahead, float(chunk)] + [1.0] * rest:
        free.sort()
        free[0] += seconds
    return sorted(free)


@given(
    size=st.integers(1, 1000),
    left=st.integers(-1, 5000),
    workers=st.integers(1, 16),
    item_seconds=st.floats(-1, 1),
    ahead=st.lists(st.floats(-1, 100), max_size=20),
)
def test_finishing_chunksize_bounds(
    size: int, left: int, workers: int, item_seconds: float, ahead: list[float]
) -> None:
    """The size is in [1, size]; unknown count or item time, or a long rest, keeps size."""
    chunk = finishing_chunksize(
        size, left=left, workers=workers, item_seconds=item_seconds, ahead=ahead
    )
    assert 1 <= chunk <= size
    if left < 0 or item_seconds <= 0 or left > size * workers:
        assert chunk == size
    elif left > 0:
        assert chunk <= left


@given(
    left=st.integers(1, 400),
    workers=st.integers(1, 8),
    ahead=st.lists(st.integers(0, 50).map(float), max_size=12),
)
def test_finishing_chunksize_lets_workers_finish_together(
    left: int, workers: int, ahead: list[float]
) -> None:
    """With one-second items, the chunk plus the rest never ends later than needed."""
    chunk = finishing_chunksize(1000, left=left, workers=workers, item_seconds=1.0, ahead=ahead)
    finish = _finish_times(chunk, left - chunk, workers, ahead)
    best = min(_finish_times(c, left - c, workers, ahead)[-1] for c in range(1, left + 1))
    assert finish[-1] <= best + 1.0


def test_finishing_chunksize_examples() -> None:
    """Worked cases: an even split, and a split around work already sent."""
    # Eight 100 ms items left on two idle workers: four each.
    assert finishing_chunksize(5, left=8, workers=2, item_seconds=0.1) == 4
    # 24 items of 20 ms; two running chunks and a queued one, 160 ms each, free the
    # workers at 160 and 320 ms: 16 items for the first, 8 left for the other.
    ahead = [0.16, 0.16, 0.16]
    assert finishing_chunksize(25, left=24, workers=2, item_seconds=0.02, ahead=ahead) == 16
    assert finishing_chunksize(5, left=20, workers=2, item_seconds=0.1) == 5
    assert finishing_chunksize(64, left=-1, workers=2, item_seconds=0.1) == 64


def test_apply_chunk_times_the_work() -> None:
    """apply_chunk returns the results in order and a non-negative duration."""
    results, seconds = apply_chunk(_workers.square, [1, 2, 3])
    assert results == [1, 4, 9]
    assert seconds >= 0


async def test_ordered_and_unordered_in_process() -> None:
    """Ordered keeps input order; unordered yields the same items; none is lost or repeated."""
    ordered = [
        r async for r in map_chunked(_in_process, _workers.square, range(1000), max_in_flight=3)
    ]
    assert ordered == [i * i for i in range(1000)]
    unordered = [
        r
        async for r in map_chunked(
            _in_process, _workers.square, range(1000), ordered=False, chunksize=7
        )
    ]
    assert sorted(unordered) == ordered


async def test_async_iterable_input() -> None:
    """An async iterable is consumed like a sync one."""

    async def numbers() -> AsyncIterator[int]:
        for i in range(50):
            await anyio.lowlevel.checkpoint()
            yield i

    results = [r async for r in map_chunked(_in_process, _workers.square, numbers(), chunksize=4)]
    assert results == [i * i for i in range(50)]


async def test_input_is_read_lazily() -> None:
    """At most max_in_flight chunks are read ahead of what was consumed."""
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    stream = map_chunked(_in_process, _workers.square, source(), chunksize=10, max_in_flight=2)
    assert await anext(stream) == 0
    assert pulled <= 30
    await stream.aclose()  # type: ignore[attr-defined]


def test_invalid_arguments() -> None:
    """chunksize and max_in_flight below 1 are rejected when iteration starts."""

    async def first(**kwargs: int) -> None:
        async for _ in map_chunked(_in_process, _workers.square, [1], **kwargs):  # type: ignore[arg-type]
            pass

    with pytest.raises(ValueError, match="chunksize"):
        anyio.run(functools.partial(first, chunksize=0))
    with pytest.raises(ValueError, match="max_in_flight"):
        anyio.run(functools.partial(first, max_in_flight=0))


class _Runner:
    """A backend run() in this process that records chunk sizes and the peak in flight."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sizes: list[int] = []
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, func: Callable[..., object], args: tuple[object, ...]) -> object:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        chunk = args[1]
        assert isinstance(chunk, list)
        self.sizes.append(len(chunk))
        try:
            await anyio.sleep(self.delay * len(chunk))
            return func(*args)
        finally:
            self.in_flight -= 1


async def test_ordered_window_is_bounded_and_in_order() -> None:
    """Ordered results come in input order with at most max_in_flight chunks running."""
    runner = _Runner(delay=0.001)
    stream = map_chunked(runner, _workers.square, range(50), chunksize=3, max_in_flight=2)
    assert [x async for x in stream] == [i * i for i in range(50)]
    assert runner.peak <= 2
    assert set(runner.sizes[:-1]) == {3}


async def test_async_items_and_chunks_growing_from_one() -> None:
    """An async iterable is accepted; automatic chunks start at first_chunksize and grow."""

    async def items() -> AsyncIterator[int]:
        for i in range(300):
            await anyio.lowlevel.checkpoint()
            yield i

    runner = _Runner()
    stream = map_chunked(
        runner, _workers.square, items(), ordered=False, max_in_flight=2, first_chunksize=1
    )
    assert sorted([x async for x in stream]) == [i * i for i in range(300)]
    assert runner.sizes[0] == 1
    assert max(runner.sizes) > 1


class _Workers:
    """A backend run() with *n* simulated workers: each item takes *item* seconds."""

    def __init__(self, n: int, item: float) -> None:
        self.item = item
        self.slots = anyio.Semaphore(n)
        self.sizes: list[int] = []
        self.ends: list[float] = []

    async def __call__(self, func: Callable[..., object], args: tuple[object, ...]) -> object:
        mapped, chunk = args
        assert callable(mapped)
        assert isinstance(chunk, list)
        async with self.slots:
            self.sizes.append(len(chunk))
            await anyio.sleep(self.item * len(chunk))
            results = [mapped(item) for item in chunk]
            self.ends.append(anyio.current_time())
            return results, self.item * len(chunk)


@pytest.mark.parametrize("ordered", [True, False])
async def test_known_length_tail_lets_workers_finish_together(ordered: bool) -> None:
    """With a sized input the last chunks are sized so both workers end within an item or two."""
    workers = _Workers(2, item=0.005)
    stream = map_chunked(
        workers, _workers.square, list(range(120)), ordered=ordered, max_in_flight=4,
        workers=2, target_chunk_seconds=0.1,
    )  # fmt: skip
    assert sorted([x async for x in stream]) == [i * i for i in range(120)]
    assert sum(workers.sizes) == 120
    assert workers.sizes[:2] == [1, 1]
    assert workers.sizes[2] > 1  # only `workers` one-item chunks before the first timing
    last, before = sorted(workers.ends)[-1], sorted(workers.ends)[-2]
    assert last - before <= 4 * workers.item


async def test_generator_input_keeps_the_timed_size() -> None:
    """A generator gives no length hint: chunks keep the time-based size to the end."""
    workers = _Workers(2, item=0.005)
    stream = map_chunked(
        workers, _workers.square, (i for i in range(120)), ordered=False, max_in_flight=4,
        workers=2, target_chunk_seconds=0.1,
    )  # fmt: skip
    assert sorted([x async for x in stream]) == [i * i for i in range(120)]
    assert sum(workers.sizes) == 120
    assert set(workers.sizes[5:-1]) == {20}  # 0.1 s of 5 ms items, up to the last chunk


async def test_first_error_is_raised_bare_and_rest_cancelled() -> None:
    """A chunk's error is raised as itself (no ExceptionGroup); chunks in flight are cancelled."""
    runner = _Runner(delay=0.001)
    with pytest.raises(KeyError):
        async for _ in map_chunked(
            runner, _workers.square_or_fail, range(100), chunksize=2, max_in_flight=3
        ):
            pass
    assert runner.in_flight == 0


async def test_map_on_worker_processes() -> None:
    """The lane's map returns every result in order, with automatic chunk sizes."""
    settings = lane_settings()
    async with ProcessLane(settings, max_workers=2) as lane:
        stream = lane.map(
            _workers.square, range(20_000), ordered=True, chunksize=None, max_in_flight=None
        )
        results = [r async for r in stream]
        assert results == [i * i for i in range(20_000)]


async def test_crash_in_a_chunk_fails_only_from_there() -> None:
    """A worker dying in a chunk raises WorkerCrashedError; earlier items came once, in order."""
    settings = lane_settings()
    async with ProcessLane(settings, max_workers=2) as lane:
        func = functools.partial(_workers.crash_on, bad=500)
        seen: list[int] = []

        async def consume() -> None:
            async for r in lane.map(func, range(2000), ordered=True, chunksize=50, max_in_flight=4):
                seen.append(r)  # noqa: PERF401 - keeps what came before the error

        with pytest.raises(WorkerCrashedError):
            await consume()
        assert seen == [i * i for i in range(len(seen))]
        assert len(seen) <= 500
        assert await lane.run(_workers.add, (1, 1), timeout=None) == 2


async def test_leaving_early_releases_workers() -> None:
    """Breaking out of a map drops queued chunks; running ones finish and free their workers."""
    settings = lane_settings()
    async with ProcessLane(settings, max_workers=2) as lane:
        stream = lane.map(_workers.sleep, [0.05] * 400, ordered=True, chunksize=1, max_in_flight=8)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        assert lane.statistics().queue_depth == 0
        with anyio.fail_after(20):
            while lane.statistics().workers_busy:  # noqa: ASYNC110 - state lives in workers
                await anyio.sleep(0.01)
        live = lane.statistics().workers_live
        assert await lane.run(_workers.add, (2, 2), timeout=None) == 4
        assert lane.statistics().crashed_total == 0
        assert lane.statistics().workers_live == live  # nothing was killed to leave
