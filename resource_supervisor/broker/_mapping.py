"""
Lazy, chunked, bounded async map over any backend that can run one call.

Covers: :func:`map_chunked` (chunks formed lazily from an iterable or async
iterable, at most ``max_in_flight`` chunks sent and not consumed, results in input
order or as chunks complete), the automatic chunk size (:func:`next_chunksize`,
pure) and the worker-side :func:`apply_chunk`. Generic: it knows nothing of
processes; the local lane (:mod:`._processes`) and the Dask backend
(:mod:`._dask`) pass their own ``run`` callable. Does not cover: where chunks run,
crash isolation or admission (the backend's ``run`` does that), pickling
(:mod:`._pickling`).

Chunk size: without a fixed ``chunksize`` the first chunks hold
``first_chunksize`` items (1); each finished chunk reports the seconds its items
took in the worker, and later chunks hold about ``target_chunk_seconds`` worth of
items, growing at most 8x per step and capped at ``max_chunksize``. Large chunks
amortise the per-call cost (a tiny function then costs about one pickle round trip
per item); the target time keeps the first results and the end of the map prompt.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Iterator,
    )

__all__ = ("RunCall", "apply_chunk", "map_chunked", "next_chunksize")

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


class _Source:
    """Take chunks from a sync or async iterable, lazily."""

    def __init__(self, items: Iterable[object] | AsyncIterable[object]) -> None:
        self._sync: Iterator[object] | None = None
        self._async: AsyncIterator[object] | None = None
        if hasattr(items, "__aiter__"):
            self._async = cast("AsyncIterable[object]", items).__aiter__()
        else:
            self._sync = iter(items)

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
    pending: collections.deque[asyncio.Task[tuple[list[R], float]]] = collections.deque()
    exhausted = False

    async def send(chunk: list[object]) -> tuple[list[R], float]:
        return cast("tuple[list[R], float]", await run(apply_chunk, (func, chunk)))

    try:
        while True:
            while not exhausted and len(pending) < max_in_flight:
                chunk = await source.take(size)
                if not chunk:
                    exhausted = True
                    break
                pending.append(asyncio.ensure_future(send(chunk)))
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
            if chunksize is None:
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
