"""
The thread lane: blocking I/O calls run on anyio worker threads, off the event loop.

Covers: :class:`ThreadLane` (``run``, ``statistics``, ``metrics``, ``aclose``):
queueing a call, waiting for it or abandoning it, and closing the lane. Its worker
threads and the hand-back of outcomes are :mod:`._thread_workers`, a call and its
states :mod:`._thread_call`, :class:`ThreadLaneStatistics` :mod:`._thread_stats`
(both names are re-exported here). Does not cover: CPU-bound work in worker processes
(:mod:`._local._lane`, :mod:`._dask._lane`), how many threads the lane gets (the supervisor
resolves ``default_io_workers``; :func:`._worker_budget.split_worker_budget` applies
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
import math
import queue
import threading
from typing import TYPE_CHECKING, Self, TypeVar, TypeVarTuple, cast

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._exceptions import CallTimeoutError, SupervisorClosedError
from .._lifecycle import AsyncClosable
from ._thread_call import DROPPED, QUEUED, ThreadCall
from ._thread_stats import ThreadLaneStatistics
from ._thread_workers import THREAD_NAME, ThreadLaneWorkers

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .._snapshot import MetricValue

__all__ = ("THREAD_NAME", "ThreadLane", "ThreadLaneStatistics")


T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ThreadLane(ThreadLaneWorkers, AsyncClosable):
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
        self._queue: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        # Guards every counter below and each call's state; held for a few
        # bytecodes only, by the loop thread and the lane threads.
        self._lock = threading.Lock()
        self._queued = 0  # calls in state QUEUED
        self._threads = 0  # workers started and not yet retired
        self._idle = 0  # workers waiting for a call (counted from their start)
        self._closing = False
        self._done: list[ThreadCall] = []  # finished calls not yet handed to the loop
        self._waiting: set[ThreadCall] = set()  # calls whose caller still waits for them
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
        dropped: list[ThreadCall] = []
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
                if call.state != QUEUED:
                    continue
                call.state = DROPPED
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
        call = ThreadCall(cast("Callable[..., object]", func), args, loop.create_future())
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
                        queued = call.state == QUEUED
                        if queued:
                            call.state = DROPPED
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

    def _abandon(self, call: ThreadCall) -> None:
        """Count *call* as abandoned until it returns (loop thread)."""
        call.abandoned = True
        self._abandoned += 1
        self._abandoned_total += 1

    async def _wait_finished(self, call: ThreadCall) -> None:
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
        with self._lock:  # the same figures as statistics(), without building the view
            threads = self._threads
            idle = self._idle
            queued = self._queued
        return {
            "thread_lane_busy": threads - idle,
            "thread_lane_capacity": self._capacity,
            "thread_lane_queued": queued,
            "thread_lane_threads": threads,
            "thread_lane_completed_total": self._completed,
            "thread_lane_failed_total": self._failed,
            "thread_lane_abandoned": self._abandoned,
            "thread_lane_abandoned_total": self._abandoned_total,
        }
