"""
The thread that does the sampler's kernel reads while the event loop waits.

Covers: :class:`ReadThread`, one daemon thread per sampler that runs one read pass
at a time, now or at a given time, and hands its outcome back to the loop that
asked; :class:`ScheduledRead`, one pass it holds. Does not cover: what is read
(:mod:`._proc`, :mod:`._cgroup`, :mod:`._psi`) or when (:mod:`.._sample_timer`).

Why a thread of its own. After an idle interval each kernel read costs tens of
microseconds (the ``pread`` that makes the kernel render ``/proc/meminfo`` or
``memory.stat``, then its parsing with cold caches), seven of them several hundred
microseconds, all of it time the loop could not run anything else. Here the loop
only queues the pass and takes the finished figures: its own time per sample is the
hand-over, and a task that becomes ready meanwhile waits at most for the thread's
longest stretch between two reads (each ``pread`` releases the GIL), not for the
whole pass. The thread is the sampler's alone, not a pool's, so a service that fills
anyio's or asyncio's worker threads cannot delay its own sampling.

A pass handed over from the loop costs the loop a second wake-up (the one that
delivers the figures) after the one that asked. A sample on a timer avoids it: its
pass is scheduled for the deadline (:meth:`ReadThread.schedule`), the thread waits
for that time itself, reads, and wakes the loop once with the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import os
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, TypeAlias, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ("ReadThread", "ScheduledRead")

T = TypeVar("T")

_Outcome: TypeAlias = tuple[bool, object]
"""``(True, result)`` or ``(False, the exception raised)``."""

_JOIN_TIMEOUT = 5.0  # seconds close() waits for a pass in flight (each is microseconds)


class ScheduledRead:
    """
    One pass queued for the read thread: what to run, when, and whom to tell.

    :meth:`cancel` may be called from the loop at any time: a pass not yet started
    is skipped, and one already done is not told to anyone.
    """

    __slots__ = ("cancelled", "func", "loop", "on_done", "when")

    def __init__(
        self,
        func: Callable[[], object],
        when: float,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[_Outcome], None],
    ) -> None:
        self.func = func
        self.when = when
        self.loop = loop
        self.on_done = on_done
        self.cancelled = False

    def cancel(self) -> None:
        """Skip the pass if it has not started; drop its outcome otherwise."""
        self.cancelled = True

    def _deliver(self, outcome: _Outcome) -> None:  # on the loop
        if not self.cancelled:
            self.on_done(outcome)


def _settle(future: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
    if not future.done():  # else the caller was cancelled: nobody waits for it
        future.set_result(outcome)


def _refuse(requests: Iterable[ScheduledRead]) -> None:
    """Tell the callers of passes left waiting when the thread stops that none will run."""
    for request in requests:
        outcome: _Outcome = (False, RuntimeError("the read thread stopped"))
        with contextlib.suppress(RuntimeError):  # that loop is closed
            request.loop.call_soon_threadsafe(request._deliver, outcome)


def _unwrap(outcome: _Outcome) -> object:
    ok, value = outcome
    if not ok:
        assert isinstance(value, BaseException)
        try:
            raise value
        finally:
            del value  # no frame <-> traceback cycle
    return value


class ReadThread:
    """
    One daemon thread running read passes, one at a time, for awaiting callers
    (:meth:`run`) or at a given time (:meth:`schedule`).

    :attr:`lock` is for the owner's reads made elsewhere, and its closing of what the
    passes read. In a child made by ``os.fork()`` the thread does not exist: there
    the read thread counts as stopped and the lock is a new one (the thread may have
    held it at the fork), so the owner reads in the caller's thread.
    """

    def __init__(self, name: str = "resource-supervisor sampler") -> None:
        self._name = name
        self._requests: queue.SimpleQueue[ScheduledRead | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()
        _ALL.add(self)

    def _after_fork_in_child(self) -> None:
        self._thread = None
        self._requests = queue.SimpleQueue()
        self.lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether the thread is started (and not stopped)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread; idempotent."""
        if self._thread is None:
            thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            thread.start()
            self._thread = thread

    def stop(self) -> None:
        """Stop the thread after the pass in flight, if any; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._requests.put(None)
            thread.join(_JOIN_TIMEOUT)

    def schedule(
        self, func: Callable[[], object], when: float, on_done: Callable[[_Outcome], None]
    ) -> ScheduledRead:
        """
        Run ``func()`` in the thread once ``time.monotonic()`` reaches *when*, then
        call ``on_done((True, result))`` or ``on_done((False, exc))`` on the calling
        loop: one wake-up of the loop, with the pass already done.

        Passes run in the order of *when* (a pass due now runs before one due
        later); a pass waiting for its time does not hold up one due sooner. When
        the thread stops first, *on_done* gets ``(False, RuntimeError(...))``.

        Raises:
            RuntimeError: If the thread is not started, or no asyncio loop runs.
        """
        if self._thread is None:
            raise RuntimeError("the read thread is not started")
        request = ScheduledRead(func, when, asyncio.get_running_loop(), on_done)
        self._requests.put(request)
        return request

    async def run(self, func: Callable[[], T]) -> T:
        """
        Run ``func()`` in the thread and return its result (or raise what it raised).

        Raises:
            RuntimeError: If the thread is not started.

        Cancellation:
            Stops waiting at once. A pass not started yet is skipped; one already
            running runs to its end in the thread and its outcome is dropped.
        """
        if self._thread is None:
            raise RuntimeError("the read thread is not started")
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        request = self.schedule(func, 0.0, functools.partial(_settle, future))
        try:
            outcome = await future
        finally:
            request.cancel()  # when cancelled: a pass not started yet is skipped
        return cast("T", _unwrap(outcome))

    def _serve(self) -> None:
        due: list[tuple[float, int, ScheduledRead]] = []  # heap: by time, then order
        order = itertools.count()
        requests = self._requests
        while True:
            timeout = None if not due else due[0][0] - time.monotonic()
            try:
                if timeout is None:
                    request = requests.get()
                elif timeout > 0:
                    request = requests.get(timeout=timeout)
                else:
                    request = requests.get_nowait()
            except queue.Empty:
                pass
            else:
                if request is None:
                    _refuse(request for _, _, request in due)
                    return
                heapq.heappush(due, (request.when, next(order), request))
                continue  # take every request queued before running one
            _, _, request = heapq.heappop(due)
            if request.cancelled:
                continue
            try:
                outcome: _Outcome = (True, request.func())
            except BaseException as exc:  # noqa: BLE001 - raised in the awaiting task
                outcome = (False, exc)
            # RuntimeError: the loop closed while the pass ran; nobody waits for it.
            with contextlib.suppress(RuntimeError):
                request.loop.call_soon_threadsafe(request._deliver, outcome)
            del request, outcome


_ALL: weakref.WeakSet[ReadThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for reader in list(_ALL):
        reader._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
