"""
The Dask lane's chunked map: a sliding window of chunk tasks.

Covers: :func:`apply_chunk` (worker side: one chunk in, a list of results out),
:func:`grow_chunksize` (pure: the next chunk size from the last chunk's duration),
:func:`map_window` (caller side: lazily reads the items, keeps at most
``max_in_flight`` chunks submitted, yields in order or as completed). Every
chunk is first checked with stdlib pickle (:func:`._pickling.check_picklable`),
so Dask's cloudpickle fallback cannot accept what the local lane would refuse.

Does not cover: admission and task submission (:mod:`._dask`). The generic
chunked map of the local lane lives in :mod:`._mapping`; this module keeps the
Dask lane independent of it until both share one.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, TypeVar

import anyio

from ._pickling import check_picklable

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable

__all__ = ("apply_chunk", "grow_chunksize", "map_window")

T = TypeVar("T")
R = TypeVar("R")

_MAX_CHUNK = 100_000


def apply_chunk(func: Callable[[T], R], chunk: list[T]) -> list[R]:
    """
    Apply *func* to every item of *chunk* (runs on a worker).

    Args:
        func: The mapped function.
        chunk: The items.

    Returns:
        The results, in order; the first exception propagates.
    """
    return [func(item) for item in chunk]


def grow_chunksize(current: int, items: int, seconds: float, target_seconds: float) -> int:
    """
    The next chunk size: grow until a chunk takes about *target_seconds*; never shrink.

    Args:
        current: The present chunk size (>= 1).
        items: Items in the chunk just measured.
        seconds: How long that chunk took, submit to result.
        target_seconds: The wanted duration of one chunk.

    Returns:
        A size between *current* and ``min(4 * current, 100_000)``.
    """
    current = max(1, current)
    if items <= 0 or seconds >= target_seconds:
        return current
    per_item = max(seconds, 1e-9) / items
    wanted = math.ceil(target_seconds / per_item)
    return max(current, min(wanted, 4 * current, _MAX_CHUNK))


async def _chunks_of(
    items: Iterable[T] | AsyncIterable[T], size: Callable[[], int]
) -> AsyncGenerator[list[T]]:
    """Read *items* lazily into chunks of ``size()`` items each."""
    chunk: list[T] = []
    if isinstance(items, AsyncIterable):
        async for item in items:
            chunk.append(item)
            if len(chunk) >= size():
                yield chunk
                chunk = []
    else:
        for item in items:
            chunk.append(item)
            if len(chunk) >= size():
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def map_window(
    run_chunk: Callable[[Callable[[T], R], list[T]], Awaitable[list[R]]],
    func: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    ordered: bool,
    chunksize: int | None,
    max_in_flight: int,
    target_chunk_seconds: float,
) -> AsyncIterator[R]:
    """
    Map *func* over *items*, at most *max_in_flight* chunks at once, via *run_chunk*.

    Args:
        run_chunk: Runs one chunk remotely and returns its results.
        func: The mapped function (checked with stdlib pickle first).
        items: The inputs, read only as window slots free up.
        ordered: Yield in input order, else as chunks complete.
        chunksize: Fixed chunk size, or ``None`` to grow from 1 towards
            *target_chunk_seconds* per chunk.
        max_in_flight: Chunks submitted and not yet yielded, at most.
        target_chunk_seconds: See *chunksize*.

    Yields:
        The results. The first error is raised bare (no exception group), after the
        chunks still in flight were cancelled.
    """
    check_picklable(func, ())
    size = chunksize or 1
    window: collections.deque[asyncio.Task[tuple[list[R], float]]] = collections.deque()

    def current_size() -> int:
        return size

    async def timed(chunk: list[T]) -> tuple[list[R], float]:
        check_picklable(func, tuple(chunk))
        started = time.monotonic()
        results = await run_chunk(func, chunk)
        return results, time.monotonic() - started

    loop = asyncio.get_running_loop()
    chunks = _chunks_of(items, current_size)
    exhausted = False
    try:
        while True:
            while not exhausted and len(window) < max(1, max_in_flight):
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    exhausted = True
                    break
                window.append(loop.create_task(timed(chunk)))
            if not window:
                return
            if ordered:
                task = window[0]
                await asyncio.wait([task])
            else:
                done, _ = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
                task = next(t for t in window if t in done)
            window.remove(task)
            results, seconds = task.result()
            if chunksize is None:
                size = grow_chunksize(size, len(results), seconds, target_chunk_seconds)
            for result in results:
                yield result
    finally:
        with anyio.CancelScope(shield=True):
            for pending in window:
                pending.cancel()
            if window:
                await asyncio.wait(window)
            for pending in window:
                if not pending.cancelled():
                    pending.exception()  # retrieved: the first error is already raised
            await chunks.aclose()
