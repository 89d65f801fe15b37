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
thread). The task waits for one of the executor's ``max_workers`` slots, then hands
the call to the lane, so the lane's admission, queue and crash isolation apply. A
thread call moves its future to RUNNING and sets its outcome in the lane thread
itself, as ``ThreadPoolExecutor`` does; a process call's future is RUNNING from the
moment it is handed to the process lane (queued there or running).

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
import contextlib
import functools
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._exceptions import SupervisorClosedError
from .._lifecycle import AsyncClosable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

__all__ = ("LaneProcessExecutor", "LaneThreadExecutor")

T = TypeVar("T")
P = ParamSpec("P")

_DEADLOCK = (
    "this would block the event loop's own thread, which drives the supervised lanes, "
    "forever: await asyncio.wrap_future(future) (or use run_in_executor / async with) there"
)


class _LaneFuture(concurrent.futures.Future[T]):
    """A future that refuses a blocking wait in the thread that must complete it."""

    def __init__(self, loop_thread: int) -> None:
        super().__init__()
        self._loop_thread = loop_thread

    def _check_wait(self, timeout: float | None) -> None:
        if timeout is None and not self.done() and threading.get_ident() == self._loop_thread:
            raise RuntimeError(f"future.result() {_DEADLOCK}")

    def result(self, timeout: float | None = None) -> T:
        """As :meth:`concurrent.futures.Future.result`; see the module docstring."""
        self._check_wait(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As :meth:`concurrent.futures.Future.exception`; see the module docstring."""
        self._check_wait(timeout)
        return super().exception(timeout)


class _Work:
    """One submitted call, its future and, once scheduled, the task driving it."""

    __slots__ = ("args", "fn", "future", "kwargs", "task")

    def __init__(
        self,
        future: _LaneFuture[Any],
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task: asyncio.Task[None] | None = None

    def run(self) -> None:
        """Run the call in the current (lane) thread and settle the future."""
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            self.future.set_exception(exc)
            # No cycle exc -> traceback -> frame -> self (as ThreadPoolExecutor).
            self = None  # type: ignore[assignment]
        else:
            self.future.set_result(result)

    def notify_cancelled(self) -> None:
        """Tell ``wait()``/``as_completed()`` waiters that a cancelled call never runs."""
        if self.future.cancelled():
            # RuntimeError: the lane thread notified them already.
            with contextlib.suppress(RuntimeError):
                self.future.set_running_or_notify_cancel()

    def fail(self, exc: BaseException) -> None:
        """Settle the future with *exc* unless it is already settled."""
        future = self.future
        if future.done():
            return
        try:
            if future.running() or future.set_running_or_notify_cancel():
                future.set_exception(exc)
        except concurrent.futures.InvalidStateError:  # settled meanwhile by its thread
            pass


class _Bridge(AsyncClosable):
    """What both executors share: scheduling onto the loop, gating, shutdown."""

    _max_workers: int

    async def aclose(self) -> None:
        """
        Shut down and wait for every call submitted here (``ashutdown()``); also
        what ``async with`` does on exit.

        Cancellation:
            As ``ashutdown()``: stops waiting; the executor stays shut down and its
            running calls go on.
        """
        await self._shutdown_async(cancel_futures=False)

    def _setup(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        loop_thread: int,
        max_workers: int,
        on_shutdown: Callable[[_Bridge], None],
    ) -> None:
        self._loop = loop
        self._loop_thread = loop_thread
        self._max_workers = max_workers
        self._gate = asyncio.Semaphore(max_workers)  # binds to the loop on first use
        self._lock = threading.Lock()
        # Calls not settled yet, by future. The future's done callback finds its call
        # here rather than holding it, so a settled call is referenced by nothing
        # (no future -> callback -> call -> future cycle keeps the callable alive).
        self._works: dict[concurrent.futures.Future[Any], _Work] = {}
        # Tasks driving calls through the lane (the loop's thread only). A future is
        # settled in the lane's thread a moment before the lane counts the call on
        # the loop; shutting down waits for these too, so the lane's figures are
        # final when ``ashutdown`` returns.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._on_shutdown = on_shutdown

    async def _execute(self, work: _Work) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- submitting (any thread) -------------------------------------------------
    def _submit(
        self, fn: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> _LaneFuture[Any]:
        future: _LaneFuture[Any] = _LaneFuture(self._loop_thread)
        work = _Work(future, fn, args, kwargs)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._works[future] = work
        future.add_done_callback(self._settled)
        if threading.get_ident() == self._loop_thread:
            self._start(work)
        else:
            try:
                self._loop.call_soon_threadsafe(self._start, work)
            except RuntimeError:  # the loop is closed: the supervisor is gone
                with self._lock:
                    self._works.pop(future, None)
                raise RuntimeError("cannot schedule new futures after shutdown") from None
        return future

    def _settled(self, future: concurrent.futures.Future[Any]) -> None:
        """Done callback (any thread): forget the call; withdraw it if cancelled."""
        with self._lock:
            work = self._works.pop(future, None)
        if work is not None and future.cancelled():
            task = work.task
            if task is not None:
                # Drop it from the lane's queue (or the gate) rather than let it
                # reach a thread just to be skipped. The callback runs in the
                # thread that cancelled the future.
                self._call_on_loop(task.cancel)

    def _call_on_loop(self, callback: Callable[[], object]) -> None:
        if threading.get_ident() == self._loop_thread:
            callback()
            return
        # RuntimeError: the loop is closed; there is nothing left to withdraw.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _start(self, work: _Work) -> None:
        """On the loop: create the task that drives *work*."""
        if work.future.done():  # cancelled before it was scheduled
            return
        task = self._loop.create_task(self._drive(work), name="resource_supervisor.executor")
        work.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, work: _Work) -> None:
        try:
            async with self._gate:
                if work.future.cancelled():
                    work.notify_cancelled()
                    return
                await self._execute(work)
        except asyncio.CancelledError:
            # Withdrawn: the future was cancelled, or the executors are closing.
            work.notify_cancelled()
            work.fail(SupervisorClosedError("executors"))
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            work.fail(exc)
        finally:
            del work

    # -- shutdown ---------------------------------------------------------------------
    def _begin_shutdown(self, *, cancel_futures: bool) -> list[concurrent.futures.Future[Any]]:
        with self._lock:
            first = not self._closed
            self._closed = True
            outstanding = list(self._works)
        if cancel_futures:
            for future in outstanding:
                future.cancel()  # only futures not yet running are cancelled
        if first:
            self._on_shutdown(self)
        return outstanding

    def _shutdown_sync(self, *, wait: bool, cancel_futures: bool) -> None:
        outstanding = self._begin_shutdown(cancel_futures=cancel_futures)
        if not wait:
            return
        if threading.get_ident() == self._loop_thread and any(
            not future.done() for future in outstanding
        ):
            raise RuntimeError(f"shutdown(wait=True) {_DEADLOCK}")
        # A cancelled call never runs: there is nothing to wait for.
        concurrent.futures.wait([f for f in outstanding if not f.cancelled()])

    async def _shutdown_async(self, *, cancel_futures: bool) -> None:
        outstanding = self._begin_shutdown(cancel_futures=cancel_futures)
        pending = [f for f in outstanding if not f.done()]  # cancelled ones are done
        if pending:
            await asyncio.wait([asyncio.wrap_future(f, loop=self._loop) for f in pending])
        if self._tasks:
            # Each ends right after the lane has counted its call.
            await asyncio.wait(set(self._tasks))

    def _abort(self) -> list[asyncio.Task[None]]:
        """On the loop, at supervisor exit: refuse new calls; return the live tasks."""
        self._begin_shutdown(cancel_futures=False)
        with self._lock:
            works = list(self._works.values())
        tasks = [w.task for w in works if w.task is not None and not w.task.done()]
        return tasks


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
        await self._run(work.run)

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

        Idempotent. Calls already running finish; with *cancel_futures*, calls not
        yet running are cancelled and never run. The lane itself stays open.

        Args:
            wait: Return only when every call submitted here has finished.
            cancel_futures: Cancel the calls that have not started.

        Raises:
            RuntimeError: If *wait* is true, calls are outstanding and this is the
                event loop's thread (the wait could never end; use :meth:`ashutdown`).
        """
        self._shutdown_sync(wait=wait, cancel_futures=cancel_futures)

    async def ashutdown(self, *, cancel_futures: bool = False) -> None:
        """
        :meth:`shutdown` with ``wait=True`` for the event loop's thread.

        Args:
            cancel_futures: Cancel the calls that have not started.

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

    async def _execute(self, work: _Work) -> None:
        if not work.future.set_running_or_notify_cancel():
            return
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
