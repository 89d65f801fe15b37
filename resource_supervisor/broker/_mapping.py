"""
Lazy, chunked, bounded async map over any backend that can run one call.

Covers: :func:`map_chunked` (chunks formed lazily from an iterable or async
iterable, at most ``max_in_flight`` chunks sent and not consumed, results in input
order or as chunks complete), the automatic chunk size (:func:`next_chunksize`,
pure) and the worker-side :func:`apply_chunk`. Generic: it knows nothing of
processes; the local lane (:mod:`._local._lane`) and the Dask backend
(:mod:`._dask._lane`) pass their own ``run`` callable. Does not cover: where chunks run,
crash isolation or admission (the backend's ``run`` does that), pickling
(:mod:`._pickling`).

Chunk size: without a fixed ``chunksize`` the first chunks hold
``first_chunksize`` items (1); each finished chunk reports the seconds its items
took in the worker, and later chunks hold about ``target_chunk_seconds`` worth of
items, growing at most 8x per step and capped at ``max_chunksize``. Large chunks
amortise the per-call cost (a tiny function then costs about one pickle round trip
per item); the target time keeps the first results and the end of the map prompt.

Until the first chunk's time is known only ``workers`` chunks are formed (more
one-item chunks would each pay the backend's per-call cost for nothing).

Tail balance: when the input says how many items are left (a list, tuple, range or
anything with ``__length_hint__``) and they no longer fill a round of full-size
chunks, each new chunk is sized so that every worker finishes at about the same time
(:func:`finishing_chunksize`: the chunks already sent are laid out on the workers,
the items left are poured over them like water, and the new chunk gets the share of
the worker that frees first). Without it one worker can run a long last chunk alone
while the others idle. Generators give no hint and keep the time-based size.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import operator
import time
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Iterator,
        Sequence,
    )

__all__ = ("RunCall", "apply_chunk", "finishing_chunksize", "map_chunked", "next_chunksize")

T = TypeVar("T")
R = TypeVar("R")

RunCall: TypeAlias = "Callable[[Callable[..., object], tuple[object, ...]], Awaitable[object]]"
"""A backend's ``run(func, args)``: run ``func(*args)`` in a worker, return its result."""

# One item first: the first chunks go out before any timing is known, and with
# several in flight a larger start hands one worker most of a short map of heavy
# items (20 x 100 ms items took 1.6 s instead of 1.0 s with 16). Tiny items reach
# full-size chunks within a few round trips anyway (8x growth per step).
FIRST_CHUNKSIZE: Final = 1
MAX_CHUNKSIZE: Final = 65536
_GROWTH: Final = 8


def apply_chunk(func: Callable[[T], R], chunk: list[T]) -> tuple[list[R], float]:
    """
    Apply *func* to every item of *chunk* (runs in the worker; module-level, picklable).

    Args:
        func: The mapped callable.
        chunk: The items.

    Returns:
        The results in order, and the seconds they took.
    """
    start = time.perf_counter()
    results = [func(item) for item in chunk]
    return results, time.perf_counter() - start


def next_chunksize(
    *,
    current: int,
    items: int,
    seconds: float,
    target_chunk_seconds: float,
    max_chunksize: int = MAX_CHUNKSIZE,
) -> int:
    """
    Return the size of the next chunk from the last one's measured time. Pure.

    Args:
        current: The size chunks have now.
        items: Items in the chunk that was measured.
        seconds: Seconds that chunk took in the worker.
        target_chunk_seconds: Wanted seconds per chunk.
        max_chunksize: Upper bound.

    Returns:
        A size in ``[1, min(max_chunksize, 8 * current)]``.
    """
    ceiling = max(1, min(max_chunksize, current * _GROWTH))
    if items <= 0:
        return max(1, min(current, ceiling))
    if seconds <= 0.0:
        return ceiling
    wanted = target_chunk_seconds * items / seconds  # may be huge or inf: clamp first
    return max(1, int(min(wanted, float(ceiling))))


def finishing_chunksize(
    size: int,
    *,
    left: int,
    workers: int,
    item_seconds: float,
    ahead: Sequence[float] = (),
) -> int:
    """
    Size the next chunk so that the workers finish together. Pure.

    The chunks already sent (their seconds of work still to do, oldest first) are
    laid out on *workers*, each on the one that frees first; the *left* items are
    then spread so every worker ends at the same time (water filling), and the new
    chunk, which runs on the worker that frees first, gets that worker's share.

    Args:
        size: The size the timing asks for (the result never exceeds it).
        left: Items not yet taken from the input; negative when unknown.
        workers: Chunks that run at once.
        item_seconds: Measured seconds per item; 0 or less when unknown.
        ahead: Seconds of work still to do in each chunk sent and not finished,
            oldest first (the oldest ``workers`` of them are the running ones).

    Returns:
        A size in ``[1, max(1, size)]``: *size* while the count or the item time is
        unknown or the items left still fill a round of full-size chunks.
    """
    size = max(1, size)
    workers = max(1, workers)
    if left < 0 or item_seconds <= 0.0 or left > size * workers:
        return size
    free = [0.0] * workers
    for seconds in ahead:
        heapq.heapreplace(free, free[0] + max(0.0, seconds))
    free.sort()
    work = left * item_seconds
    finish = free[-1]
    total = 0.0
    for k, start in enumerate(free, 1):
        total += start
        level = (work + total) / k
        if k == workers or level <= free[k]:
            finish = level
            break
    share = math.ceil((finish - free[0]) / item_seconds - 1e-9)
    return max(1, min(size, left, share))


class _Timeline:
    """
    The chunks sent and not yet consumed: when each started and the work it has left.

    The backend runs chunks in the order sent on ``parallel`` workers, so chunk
    number n starts when it is sent or, if all workers were busy, when the worker of
    chunk n - parallel freed: at the (n - parallel)-th completion.
    """

    def __init__(self, parallel: int, *, keep: int) -> None:
        self._parallel = parallel
        self._finished: collections.deque[float] = collections.deque(maxlen=keep)
        self._finished_count = 0
        self._sent_count = 0
        # in send order (dicts keep insertion order): number, items, send time
        self._chunks: dict[asyncio.Future[object], tuple[int, int, float]] = {}

    def sent(self, task: asyncio.Future[Any], items: int) -> None:
        """Record a chunk of *items* just sent as *task*."""
        self._chunks[task] = (self._sent_count, items, time.monotonic())
        self._sent_count += 1
        task.add_done_callback(self._finish)

    def _finish(self, _: object) -> None:
        self._finished.append(time.monotonic())
        self._finished_count += 1

    def consumed(self, task: asyncio.Future[Any]) -> None:
        """Forget a chunk whose results were taken."""
        del self._chunks[task]

    def ahead(self, item_seconds: float) -> list[float]:
        """Seconds of work left in each unfinished chunk, oldest first."""
        now = time.monotonic()
        left: list[float] = []
        for task, (number, items, sent_at) in self._chunks.items():
            if task.done():
                continue
            start = self._started_at(number, sent_at)
            work = items * item_seconds
            left.append(work if start is None else work - (now - start))
        return left

    def _started_at(self, number: int, sent_at: float) -> float | None:
        if number < self._parallel:
            return sent_at
        index = number - self._parallel - (self._finished_count - len(self._finished))
        if index >= len(self._finished):
            return None  # still waiting for a worker
        return max(sent_at, self._finished[index]) if index >= 0 else sent_at


class _Source:
    """Take chunks from a sync or async iterable, lazily."""

    def __init__(self, items: Iterable[object] | AsyncIterable[object]) -> None:
        self._sync: Iterator[object] | None = None
        self._async: AsyncIterator[object] | None = None
        if hasattr(items, "__aiter__"):
            self._async = cast("AsyncIterable[object]", items).__aiter__()
        else:
            self._sync = iter(items)

    def left(self) -> int:
        """Items not yet taken, from the iterator's length hint; -1 when unknown."""
        if self._sync is None:
            return -1
        try:
            return operator.length_hint(self._sync, -1)
        except Exception:  # noqa: BLE001 - a broken hint only loses the tail balance
            return -1

    async def take(self, size: int) -> list[object]:
        if self._sync is not None:
            return list(itertools.islice(self._sync, size))
        assert self._async is not None
        chunk: list[object] = []
        while len(chunk) < size:
            try:
                chunk.append(await anext(self._async))
            except StopAsyncIteration:
                break
        return chunk


async def map_chunked(
    run: RunCall,
    func: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    ordered: bool = True,
    chunksize: int | None = None,
    max_in_flight: int = 2,
    target_chunk_seconds: float = 0.02,
    first_chunksize: int = FIRST_CHUNKSIZE,
    max_chunksize: int = MAX_CHUNKSIZE,
    workers: int | None = None,
) -> AsyncIterator[R]:
    """
    Map *func* over *items* in chunks through *run*, yielding results one by one.

    Args:
        run: The backend's ``run(func, args)``; called as
            ``run(apply_chunk, (func, chunk))``, it must return what
            :func:`apply_chunk` returned in the worker.
        func: A picklable callable of one argument.
        items: An iterable or async iterable, read only as chunks are formed.
        ordered: Yield in input order, or chunk by chunk as they complete.
        chunksize: Fixed items per chunk; ``None`` for the automatic size.
        max_in_flight: Chunks sent and not yet consumed (>= 1).
        target_chunk_seconds: Automatic size aims at chunks this long.
        first_chunksize: Automatic size starts here.
        max_chunksize: Automatic size never exceeds this.
        workers: Chunks the backend runs at once: automatic sizes form only this many
            chunks before the first timing, and balance the tail over them
            (``None``: *max_in_flight*).

    Returns:
        An async iterator of results (an async generator).

    Raises:
        ValueError: If *chunksize* or *max_in_flight* is below 1.

    Cancellation:
        Leaving the loop early (``break`` then ``aclose()`` or garbage collection,
        or cancellation of the consuming task) cancels every chunk not yet consumed:
        the backend drops the ones still queued and releases the workers. The first
        chunk error ends the iteration with that error; the items of other chunks
        are never yielded twice.
    """
    if chunksize is not None and chunksize < 1:
        raise ValueError("chunksize must be at least 1")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    source = _Source(items)
    size = chunksize if chunksize is not None else max(1, first_chunksize)
    parallel = max(1, workers if workers is not None else max_in_flight)
    timed = chunksize is not None  # a size is known (fixed, or measured once)
    item_seconds = 0.0  # last measured seconds per item
    pending: collections.deque[asyncio.Task[tuple[list[R], float]]] = collections.deque()
    timeline = _Timeline(parallel, keep=max_in_flight + parallel)
    exhausted = False

    async def send(chunk: list[object]) -> tuple[list[R], float]:
        return cast("tuple[list[R], float]", await run(apply_chunk, (func, chunk)))

    def next_size() -> int:
        if chunksize is not None:
            return chunksize
        left = source.left()
        if not timed or left < 0 or left > size * parallel:
            return size
        return finishing_chunksize(
            size,
            left=left,
            workers=parallel,
            item_seconds=item_seconds,
            ahead=timeline.ahead(item_seconds),
        )

    try:
        while True:
            window = max_in_flight if timed else min(max_in_flight, parallel)
            while not exhausted and len(pending) < window:
                chunk = await source.take(next_size())
                if not chunk:
                    exhausted = True
                    break
                task = asyncio.ensure_future(send(chunk))
                pending.append(task)
                timeline.sent(task, len(chunk))
            if not pending:
                return
            if ordered:
                task = pending.popleft()
                results, seconds = await task
            else:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                task = next(t for t in pending if t in done)
                pending.remove(task)
                results, seconds = task.result()
            timeline.consumed(task)
            if chunksize is None:
                timed = True
                if results:
                    item_seconds = seconds / len(results)
                size = next_chunksize(
                    current=size,
                    items=len(results),
                    seconds=seconds,
                    target_chunk_seconds=target_chunk_seconds,
                    max_chunksize=max_chunksize,
                )
            for result in results:
                yield result
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled():
                    task.exception()  # retrieved: the iteration already ended
