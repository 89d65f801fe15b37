"""
Standard-library executors over the supervised lanes: ``sup.executors.thread_executor()``
and ``sup.executors.process_executor()``.

Covers: :class:`LaneThreadExecutor` (a :class:`concurrent.futures.ThreadPoolExecutor`
subclass, so ``loop.set_default_executor`` accepts it) and
:class:`LaneProcessExecutor` (a :class:`concurrent.futures.Executor`), their futures
and how a call submitted from any thread reaches a lane. Does not cover: the lanes
themselves (:mod:`._threads`, :mod:`._local._lane`, :mod:`._dask._lane`) or installing the
loop's default executor (:meth:`._executors.Executors.set_default_executor`).

How a call travels. ``submit`` never blocks and never waits for the event loop: it
records the call and schedules an asyncio task on the supervisor's loop (directly
when called in the loop's thread, through ``call_soon_threadsafe`` from any other
thread) once the call holds one of the executor's ``max_workers`` slots; the task
hands the call to the lane, so the lane's admission, queue and crash isolation
apply. A thread call moves its future to RUNNING and sets its outcome in the lane
thread itself, as ``ThreadPoolExecutor`` does; a process call's future is RUNNING
from the moment it gets a slot, in ``submit`` when one is free, as
``ProcessPoolExecutor``'s is once handed to its workers' queue
(:mod:`._executor_bridge` has the details).

Submitting from the loop's own thread: the lanes are driven by the loop, so nothing
submitted can progress while that thread blocks. ``submit`` and ``map`` only
schedule, so ``loop.run_in_executor``, ``asyncio.to_thread`` (through the default
executor) and ``await asyncio.wrap_future(future)`` work there. A blocking wait in
that thread (``future.result()`` without a timeout, iterating ``map``, or
``shutdown(wait=True)`` with calls outstanding) could never return, so it raises
:exc:`RuntimeError` at once instead of hanging; :meth:`LaneThreadExecutor.ashutdown`
and ``async with`` wait without blocking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._executor_bridge import _Bridge as _Bridge  # re-exported for ._executors
from ._executor_bridge import _LaneFuture, _Work

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

__all__ = ("LaneProcessExecutor", "LaneThreadExecutor")

T = TypeVar("T")
P = ParamSpec("P")


class LaneThreadExecutor(_Bridge, concurrent.futures.ThreadPoolExecutor):
    """
    A :class:`concurrent.futures.ThreadPoolExecutor` whose calls run in the
    supervisor's thread lane.

    Made by ``sup.executors.thread_executor()``; ``sup.executors.set_default_executor()``
    also makes it the loop's default executor. It starts no thread of its own: each
    call goes through the lane (its capacity, queue and ``thread_lane_*`` metrics),
    with at most ``max_workers`` of this executor's calls in the lane at once. Use it
    from any thread; in the event loop's thread, wait with ``await
    asyncio.wrap_future(future)`` (see the module docstring). Shutting it down does
    not close the lane; the supervisor's exit shuts it down.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        loop_thread: int,
        max_workers: int,
        run: Callable[[Callable[[], None]], Awaitable[None]],
        on_shutdown: Callable[[_Bridge], None],
    ) -> None:
        """
        Private: use ``sup.executors.thread_executor()``.

        Raises:
            ValueError: If *max_workers* is below 1.
        """
        concurrent.futures.ThreadPoolExecutor.__init__(
            self, max_workers=max_workers, thread_name_prefix="resource-supervisor"
        )
        self._setup(
            loop=loop, loop_thread=loop_thread, max_workers=max_workers, on_shutdown=on_shutdown
        )
        self._run = run

    async def _execute(self, work: _Work) -> None:
        # The lane thread takes the call out of the box, so once it has settled the
        # future nothing here holds the result (a caller that drops it frees it).
        box = [work]
        del work
        await self._run(lambda: box.pop().run())

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> _LaneFuture[T]:
        """
        Schedule ``fn(*args, **kwargs)`` in the thread lane; never blocks.

        Args:
            fn: A blocking callable; it must not touch the event loop.
            args: Positional arguments for *fn*.
            kwargs: Keyword arguments for *fn* (all of them are *fn*'s).

        Returns:
            A :class:`concurrent.futures.Future`. Cancelling it before its call
            starts withdraws the call from the lane. If the supervisor exits first,
            it fails with :class:`SupervisorClosedError`.

        Raises:
            RuntimeError: After :meth:`shutdown` or the supervisor's exit.
        """
        return self._submit(fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: FBT001, FBT002
        """
        Refuse new calls; optionally cancel those not started; optionally wait.

        Idempotent. Calls already running finish; with *cancel_futures*, the calls
        still waiting for one of this executor's ``max_workers`` slots are cancelled
        and never run, while those already in the lane (at most ``max_workers``) go
        on. The lane itself stays open.

        Args:
            wait: Return only when every call submitted here has finished.
            cancel_futures: Cancel the calls waiting for a slot.

        Raises:
            RuntimeError: If *wait* is true, calls are outstanding and this is the
                event loop's thread (the wait could never end; use :meth:`ashutdown`).
        """
        self._shutdown_sync(wait=wait, cancel_futures=cancel_futures)

    async def ashutdown(self, *, cancel_futures: bool = False) -> None:
        """
        :meth:`shutdown` with ``wait=True`` for the event loop's thread.

        Args:
            cancel_futures: Cancel the calls waiting for a slot.

        Cancellation:
            Stops waiting; the executor stays shut down and its running calls go on.
        """
        await self._shutdown_async(cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<LaneThreadExecutor max_workers={self._max_workers} shutdown={self._closed}>"


def _run_chunk(fn: Callable[..., T], chunk: list[tuple[object, ...]]) -> list[T]:
    """Worker side of a chunked map: ``[fn(*args) for args in chunk]``."""
    return [fn(*args) for args in chunk]


def _chunks(
    iterables: tuple[Iterable[object], ...], size: int
) -> Iterator[list[tuple[object, ...]]]:
    it = zip(*iterables, strict=False)
    while True:
        chunk = [args for _, args in zip(range(size), it, strict=False)]
        if not chunk:
            return
        yield chunk


def _flatten(results: Iterator[list[T]]) -> Iterator[T]:
    for chunk in results:
        chunk.reverse()
        while chunk:
            # pop: the iterator keeps no reference to a result once yielded
            yield chunk.pop()


class LaneProcessExecutor(_Bridge, concurrent.futures.Executor):
    """
    A :class:`concurrent.futures.Executor` whose calls run in the supervisor's
    process lane (local worker processes or the Dask backend).

    Made by ``sup.executors.process_executor()``. Each call is one
    ``run_in_process`` call: its callable and arguments must pickle; a crashed
    worker fails only its own future (:class:`WorkerCrashedError`); at CRITICAL
    pressure a call beyond the lane's queue limit fails with
    :class:`OverloadedError`. At most ``max_workers`` of this executor's calls are
    in the lane at once; :meth:`map` sends ``chunksize`` items per call. Use it from
    any thread, as :class:`LaneThreadExecutor`.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        loop_thread: int,
        max_workers: int,
        run: Callable[[Callable[[], object]], Awaitable[object]],
        on_shutdown: Callable[[_Bridge], None],
    ) -> None:
        """
        Private: use ``sup.executors.process_executor()``.

        Raises:
            ValueError: If *max_workers* is below 1.
        """
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._setup(
            loop=loop, loop_thread=loop_thread, max_workers=max_workers, on_shutdown=on_shutdown
        )
        self._run = run

    _RUNNING_WHEN_ADMITTED = True

    async def _execute(self, work: _Work) -> None:
        # RUNNING since it was admitted (see ._executor_bridge).
        call = functools.partial(work.fn, *work.args, **work.kwargs)
        try:
            result = await self._run(call)
        except BaseException as exc:
            work.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            work.future.set_result(result)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> _LaneFuture[T]:
        """
        Schedule ``fn(*args, **kwargs)`` in the process lane; never blocks.

        Args:
            fn: A picklable, module-level callable.
            args: Picklable positional arguments.
            kwargs: Picklable keyword arguments (all of them are *fn*'s).

        Returns:
            A :class:`concurrent.futures.Future`. It fails with
            :class:`UnpicklableError`, :class:`WorkerCrashedError`,
            :class:`OverloadedError` or :class:`SupervisorClosedError` as
            ``run_in_process`` would raise them.

        Raises:
            RuntimeError: After :meth:`shutdown` or the supervisor's exit.
        """
        return self._submit(fn, args, kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """
        As :meth:`concurrent.futures.ProcessPoolExecutor.map`: every call is
        submitted at once, in chunks of *chunksize* items, and results are yielded
        in order.

        Args:
            fn: A picklable callable taking one item of each iterable.
            iterables: The inputs.
            timeout: Seconds from this call after which the iterator raises
                :exc:`TimeoutError` (and cancels what has not started).
            chunksize: Items sent to a worker per call.

        Returns:
            An iterator of results; it raises the first failing call's exception.

        Raises:
            ValueError: If *chunksize* is below 1.
            RuntimeError: After :meth:`shutdown` or the supervisor's exit.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        results = super().map(
            functools.partial(_run_chunk, fn), _chunks(iterables, chunksize), timeout=timeout
        )
        return _flatten(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: FBT001, FBT002
        """
        Refuse new calls; optionally cancel those not started; optionally wait.

        As :meth:`LaneThreadExecutor.shutdown`; the process lane stays open.

        Args:
            wait: Return only when every call submitted here has finished.
            cancel_futures: Cancel the calls not yet handed to the process lane.

        Raises:
            RuntimeError: If *wait* is true, calls are outstanding and this is the
                event loop's thread (use :meth:`ashutdown`).
        """
        self._shutdown_sync(wait=wait, cancel_futures=cancel_futures)

    async def ashutdown(self, *, cancel_futures: bool = False) -> None:
        """
        :meth:`shutdown` with ``wait=True`` for the event loop's thread.

        Args:
            cancel_futures: Cancel the calls not yet handed to the process lane.

        Cancellation:
            Stops waiting; the executor stays shut down and its calls go on.
        """
        await self._shutdown_async(cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<LaneProcessExecutor max_workers={self._max_workers} shutdown={self._closed}>"
