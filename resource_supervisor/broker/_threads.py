"""
The thread lane: blocking I/O calls run on anyio worker threads, off the event loop.

Covers: :class:`ThreadLane` (``run``, ``statistics``, ``metrics``, ``aclose``) and
:class:`ThreadLaneStatistics`. Does not cover: CPU-bound work in worker processes
(:mod:`._local._lane`, :mod:`._dask._lane`), how many threads the lane gets (the supervisor
resolves ``default_io_workers``; :func:`._executors.split_worker_budget` applies
``max_total_workers``), or the public facade (:mod:`._executors`).

How it works. The lane keeps its own queue of calls. Its workers are long-lived
loops, each on a daemon thread the lane starts, and each serving many calls from
the queue. A worker is started lazily, up to the lane's capacity, only when a call
is queued and no worker is free; a worker idle for ``idle_timeout`` seconds exits,
so an idle service holds no lane thread. Daemon threads, not anyio's worker
threads: a call that never returns is abandoned (by its caller's ``timeout=`` or
``abandon_on_cancel``, or at close after ``close_timeout``), and a non-daemon thread
would keep the interpreter from exiting after the service stopped.
Results go back to the event loop in batches: one ``loop.call_soon_threadsafe``
per batch of completions, not per call. That is what makes the lane cheaper than
one ``anyio.to_thread.run_sync`` per call.

The lane's capacity is its own, never anyio's default limiter: a busy application
cannot starve the lane, nor the lane the application.

Use the lane as an async context manager (:class:`._executors.Executors` does).
The lane needs an asyncio event loop; its callers must run on the loop it was
entered on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import math
import queue
import threading
from typing import TYPE_CHECKING, Final, Self, TypeVar, TypeVarTuple, cast

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._exceptions import CallTimeoutError, SupervisorClosedError
from .._lifecycle import AsyncClosable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .._snapshot import MetricValue

__all__ = ("ThreadLane", "ThreadLaneStatistics")


@contextlib.contextmanager
def _anyio_worker(loop: asyncio.AbstractEventLoop | None) -> Iterator[None]:
    """
    Mark this thread as a worker thread of *loop* for anyio, as anyio's own worker
    threads are, so that calls in the lane can use ``anyio.from_thread.run()`` and
    ``run_sync()`` (and the sync facade finds the supervisor). anyio keeps that
    marker in private thread-locals; without them the calls still run, only
    ``from_thread`` does not.
    """
    try:
        from anyio._core._eventloop import (
            claim_worker_thread,
            get_async_backend,
            threadlocals,
        )
    except ImportError:  # pragma: no cover - another anyio layout
        yield
        return
    with claim_worker_thread(get_async_backend("asyncio"), loop):
        threadlocals.current_cancel_scope = None  # from_thread.check_cancelled(): never
        try:
            yield
        finally:
            del threadlocals.current_cancel_scope


T = TypeVar("T")
Ts = TypeVarTuple("Ts")

THREAD_NAME: Final = "resource-supervisor thread lane"
"""Name a lane worker's thread carries while it serves the lane (restored after)."""

# Call states; every transition happens under the lane's lock.
_QUEUED: Final = 0  # in the queue, not taken by a worker
_RUNNING: Final = 1  # taken by a worker; it will run to the end
_DROPPED: Final = 2  # cancelled while queued, or failed by aclose(); never runs


@dataclasses.dataclass(frozen=True, slots=True)
class ThreadLaneStatistics:
    """
    A point-in-time view of a :class:`ThreadLane`.

    Attributes:
        capacity: Most lane threads that may exist at once.
        busy: Calls running in a lane thread now (abandoned ones included).
        queued: Calls waiting for a lane thread.
        threads: Lane threads alive now (busy or idle).
        completed: Calls that returned, since the lane started.
        failed: Calls that raised, since the lane started.
        abandoned: Calls still running whose caller left (``timeout=`` expired, or
            cancelled with ``abandon_on_cancel=True``); each holds a lane thread.
        abandoned_total: Calls ever abandoned, since the lane started.
    """

    capacity: int
    busy: int
    queued: int
    threads: int
    completed: int
    failed: int
    abandoned: int = 0
    abandoned_total: int = 0


class _Call:
    """One queued call and, once it ran, its outcome."""

    __slots__ = (
        "abandoned",
        "args",
        "closed_out",
        "context",
        "error",
        "finished",
        "func",
        "future",
        "state",
        "value",
    )

    def __init__(
        self,
        func: Callable[..., object],
        args: tuple[object, ...],
        future: asyncio.Future[None],
    ) -> None:
        self.func = func
        self.args = args
        self.context = contextvars.copy_context()
        self.future = future
        self.state = _QUEUED
        self.finished = False  # outcome delivered on the event loop
        self.abandoned = False  # its caller left while it ran (loop thread only)
        self.closed_out = False  # still running when aclose() gave up on it
        self.value: object = None
        self.error: BaseException | None = None


class ThreadLane(AsyncClosable):
    """
    Runs blocking calls on anyio worker threads under the lane's own limiter.

    Use as an async context manager; :meth:`run` works only inside it.
    """

    def __init__(
        self,
        capacity: int,
        *,
        idle_timeout: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        """
        Prepare the lane; no thread starts until a call needs one.

        Args:
            capacity: Most threads the lane runs at once. The supervisor passes
                ``default_io_workers`` resolved to an int: ``"auto"`` is CPython's
                thread-pool default, ``min(32, usable_cpus + 4)``.
            idle_timeout: Seconds a lane thread waits for a call before it exits.
            close_timeout: Seconds :meth:`aclose` waits for running calls before it
                stops waiting for them.

        Raises:
            ValueError: If *capacity* is below 1 or a timeout is not positive.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if idle_timeout <= 0 or close_timeout <= 0:
            raise ValueError("idle_timeout and close_timeout must be positive")
        self._capacity = capacity
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # Guards every counter below and each call's state; held for a few
        # bytecodes only, by the loop thread and the lane threads.
        self._lock = threading.Lock()
        self._queued = 0  # calls in state _QUEUED
        self._threads = 0  # workers started and not yet retired
        self._idle = 0  # workers waiting for a call (counted from their start)
        self._closing = False
        self._done: list[_Call] = []  # finished calls not yet handed to the loop
        self._waiting: set[_Call] = set()  # calls whose caller still waits for them
        self._flush_scheduled = False
        # Loop-thread-only state.
        self._completed = 0
        self._failed = 0
        self._abandoned = 0
        self._abandoned_total = 0
        self._state = "new"  # new -> open -> closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task_group: TaskGroup | None = None
        self._stopped: anyio.Event | None = None
        # Worker threads started (pruned as they end): aclose() waits for the last
        # moments of those that stopped, so none is alive once it returns.
        self._workers: set[threading.Thread] = set()

    # -- lifecycle --------------------------------------------------------------
    async def __aenter__(self) -> Self:
        """
        Open the lane and its task group of worker hosts; starts no thread.

        Raises:
            RuntimeError: If the lane was entered before.

        Cancellation:
            Not a checkpoint beyond entering the task group; a cancelled entry
            leaves the lane unopened.
        """
        if self._state != "new":
            raise RuntimeError("a ThreadLane can be entered only once")
        self._loop = asyncio.get_running_loop()
        self._stopped = anyio.Event()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._state = "open"
        return self

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """After :meth:`aclose` on ``async with`` exit: leave the hosts' task group."""
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            # Every host has returned or been abandoned by aclose().
            await task_group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """
        Close the lane: fail queued calls, wait (bounded) for running ones.

        Idempotent. It always closes, even when cancelled or failing. Calls still
        queued fail with ``SupervisorClosedError("thread lane")`` and never run;
        later :meth:`run` calls raise the same. Running calls are waited for, up to
        ``close_timeout`` seconds, and their callers get their outcome as usual.
        Once they end, every lane thread has exited. A call still running after
        ``close_timeout`` cannot be interrupted: its caller gets
        ``SupervisorClosedError("thread lane")``, and its thread (a daemon) runs on
        unobserved and exits as soon as the call returns, or with the interpreter.

        Cancellation:
            The wait for running calls is shielded: cancelling ``aclose`` does not
            shorten it (``close_timeout`` bounds it).
        """
        if self._state == "closed":
            return
        opened = self._state == "open"
        self._state = "closed"
        if not opened:
            return
        dropped: list[_Call] = []
        # Fail what is still queued. A call is popped either here or by a worker;
        # its state decides who owns it.
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                break
            if call is None:
                continue
            with self._lock:
                if call.state != _QUEUED:
                    continue
                call.state = _DROPPED
                self._queued -= 1
            dropped.append(call)
        for call in dropped:
            call.error = SupervisorClosedError("thread lane")
            self._deliver(call)
        with self._lock:
            self._closing = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)  # one stop marker per worker
        if threads:
            assert self._stopped is not None
            with anyio.move_on_after(self._close_timeout, shield=True):
                await self._stopped.wait()
                # Each stopped worker has only its return left: wait for it, so no
                # lane thread is alive when aclose() returns.
                while any(worker.is_alive() for worker in self._workers):  # noqa: ASYNC110 - a thread ending sets no event
                    await anyio.sleep(0.001)
                self._workers.clear()
            # Give up on the calls still running: their callers get
            # SupervisorClosedError instead of waiting for calls that may never end.
            for call in list(self._waiting):
                if not call.finished:
                    call.closed_out = True
                    self._deliver_closed_out(call)
        # Calls that outlived close_timeout run on in their daemon threads,
        # unobserved; such a thread exits when its call returns, or with the
        # interpreter.

    # -- calls ------------------------------------------------------------------
    async def run(
        self,
        func: Callable[[*Ts], T],
        *args: *Ts,
        abandon_on_cancel: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call deadline, like run_in_process
    ) -> T:
        """
        Call ``func(*args)`` in a lane thread. Use functools.partial for keywords.

        The call runs in a copy of the caller's :mod:`contextvars` context, as with
        ``anyio.to_thread.run_sync``: it sees the caller's values, and what it sets
        stays in the thread's copy.

        Args:
            func: A blocking callable; it must not touch the event loop.
            args: Positional arguments for *func*.
            abandon_on_cancel: What cancellation does once the thread runs.
            timeout: Seconds the caller waits, queueing included (``None`` = no
                limit). On expiry a queued call is removed and never runs; a running
                one cannot be interrupted, so its thread is abandoned: it runs on
                unobserved, holding its lane thread until *func* returns, and is
                counted in ``abandoned`` / ``abandoned_total``.

        Returns:
            Whatever ``func(*args)`` returns; its exceptions propagate unchanged
            (the same object, its traceback intact).

        Raises:
            SupervisorClosedError: If the lane is not open, or closed while the call
                was queued (``what == "thread lane"``).
            CallTimeoutError: If *timeout* expired.
            ValueError: If *timeout* is not a positive finite number.

        Cancellation:
            Checked before the call is queued. A call cancelled while queued is
            removed and never runs. A running *func* cannot be interrupted: by
            default the caller waits for it, then raises the cancellation and drops
            the result. With ``abandon_on_cancel=True`` the caller raises at once and
            the thread runs on unobserved; its slot (a lane thread and a limiter
            token) is freed only when *func* returns.
        """
        if self._state != "open":
            raise SupervisorClosedError("thread lane")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        await anyio.lowlevel.checkpoint_if_cancelled()
        loop = self._loop
        assert loop is not None
        call = _Call(cast("Callable[..., object]", func), args, loop.create_future())
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self._capacity
            if start:
                self._threads += 1
                self._idle += 1
        self._queue.put(call)
        self._waiting.add(call)
        try:
            if start:
                self._start_worker()
            queued = False
            with anyio.move_on_after(math.inf if timeout is None else timeout) as deadline:
                try:
                    await call.future
                except asyncio.CancelledError:
                    with self._lock:
                        queued = call.state == _QUEUED
                        if queued:
                            call.state = _DROPPED
                            self._queued -= 1
                    if not queued and not call.finished:
                        if abandon_on_cancel or deadline.cancel_called:
                            self._abandon(call)
                        else:
                            await self._wait_finished(call)
                    raise
            if deadline.cancelled_caught:
                raise CallTimeoutError(
                    getattr(func, "__qualname__", repr(func)),
                    cast("float", timeout),
                    "its thread was abandoned" if not queued else "it never started",
                )
            if call.closed_out:
                raise SupervisorClosedError("thread lane")
            error = call.error
            if error is not None:
                call.error = None
                try:
                    raise error
                finally:
                    del error  # no frame <-> traceback cycle
            return cast("T", call.value)
        finally:
            self._waiting.discard(call)

    def _abandon(self, call: _Call) -> None:
        """Count *call* as abandoned until it returns (loop thread)."""
        call.abandoned = True
        self._abandoned += 1
        self._abandoned_total += 1

    async def _wait_finished(self, call: _Call) -> None:
        """Wait, shielded, until *call*'s outcome reaches the loop."""
        loop = self._loop
        assert loop is not None
        with anyio.CancelScope(shield=True):
            while not (call.finished or call.closed_out):
                call.future = loop.create_future()
                try:
                    await call.future
                except asyncio.CancelledError:
                    # A plain asyncio cancel goes through anyio's shield; the call
                    # still runs, so keep waiting and raise the first cancel after.
                    continue

    # -- inspection ---------------------------------------------------------------
    def statistics(self) -> ThreadLaneStatistics:
        """
        Return the lane's counters now; cheap, never blocks.

        Returns:
            A frozen :class:`ThreadLaneStatistics`.
        """
        with self._lock:
            threads = self._threads
            idle = self._idle
            queued = self._queued
        return ThreadLaneStatistics(
            capacity=self._capacity,
            busy=threads - idle,
            queued=queued,
            threads=threads,
            completed=self._completed,
            failed=self._failed,
            abandoned=self._abandoned,
            abandoned_total=self._abandoned_total,
        )

    def metrics(self) -> dict[str, MetricValue]:
        """
        Return the lane's counters as flat ``thread_lane_*`` snapshot metrics.

        Returns:
            ``thread_lane_busy``, ``thread_lane_capacity``, ``thread_lane_queued``,
            ``thread_lane_threads``, ``thread_lane_completed_total``,
            ``thread_lane_failed_total``, ``thread_lane_abandoned`` and
            ``thread_lane_abandoned_total``.
        """
        stats = self.statistics()
        return {
            "thread_lane_busy": stats.busy,
            "thread_lane_capacity": stats.capacity,
            "thread_lane_queued": stats.queued,
            "thread_lane_threads": stats.threads,
            "thread_lane_completed_total": stats.completed,
            "thread_lane_failed_total": stats.failed,
            "thread_lane_abandoned": stats.abandoned,
            "thread_lane_abandoned_total": stats.abandoned_total,
        }

    # -- workers --------------------------------------------------------------------
    def _start_worker(self) -> None:
        """Start one worker on a new daemon thread (counted by the caller)."""
        thread = threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True)
        self._workers = {worker for worker in self._workers if worker.is_alive()}
        self._workers.add(thread)
        try:
            thread.start()
        except BaseException:
            # No thread (RuntimeError: can't start new thread): undo its count; the
            # queued call waits for another worker, or fails at close.
            with self._lock:
                self._threads -= 1
                self._idle -= 1
                stopped = self._closing and self._threads == 0
            if stopped:
                self._set_stopped()
            raise

    def _serve(self) -> None:
        """The worker loop: run queued calls until told to stop or idle too long."""
        with _anyio_worker(self._loop):
            stopped = self._serve_calls()
        if stopped:
            self._post(self._set_stopped)

    def _serve_calls(self) -> bool:
        """Run calls until told to stop or idle; True if the last worker stopped at close."""
        lock = self._lock
        get = self._queue.get
        timeout = self._idle_timeout
        stopped = False
        while True:
            try:
                call = get(timeout=timeout)
            except queue.Empty:
                with lock:
                    if self._queued:
                        continue  # a call arrived as the wait timed out
                    stopped = self._retire()
                break
            if call is None:
                with lock:
                    stopped = self._retire()
                break
            with lock:
                if call.state != _QUEUED:
                    continue  # cancelled while queued, or failed by aclose()
                call.state = _RUNNING
                self._queued -= 1
                self._idle -= 1
            try:
                call.value = call.context.run(call.func, *call.args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                call.error = exc
            with lock:
                self._idle += 1
                self._done.append(call)
                flush = not self._flush_scheduled
                self._flush_scheduled = True
            del call  # the loop owns it now
            if flush:
                self._post(self._flush)
        return stopped

    def _retire(self) -> bool:
        """Count this worker out (lock held); True if it was the last one at close."""
        self._threads -= 1
        self._idle -= 1
        return self._closing and self._threads == 0

    def _post(self, callback: Callable[[], object]) -> None:
        """Schedule *callback* on the lane's loop from a lane thread."""
        assert self._loop is not None
        # RuntimeError: the loop is closed; an abandoned call outlived it, nobody waits.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _set_stopped(self) -> None:
        assert self._stopped is not None
        self._stopped.set()

    # -- completions (event loop) ---------------------------------------------
    def _flush(self) -> None:
        """Hand every finished call's outcome to its caller (one batch)."""
        with self._lock:
            self._flush_scheduled = False
            batch = self._done
            self._done = []
        for call in batch:
            if call.error is None:
                self._completed += 1
            else:
                self._failed += 1
            if call.abandoned:
                self._abandoned -= 1
            self._deliver(call)

    def _deliver(self, call: _Call) -> None:
        call.finished = True
        self._waiting.discard(call)
        future = call.future
        if not future.done():
            future.set_result(None)

    @staticmethod
    def _deliver_closed_out(call: _Call) -> None:
        future = call.future
        if not future.done():
            future.set_result(None)
