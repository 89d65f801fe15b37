"""
The thread that does the sampler's kernel reads while the event loop waits.

Covers: :class:`ReadThread`, one daemon thread per sampler that runs one read pass
at a time and hands its outcome back to the loop that asked. Does not cover: what is
read (:mod:`._proc`, :mod:`._cgroup`, :mod:`._psi`) or when (:mod:`.._sample_timer`).

Why a thread of its own. After an idle interval each kernel read costs tens of
microseconds (the ``pread`` that makes the kernel render ``/proc/meminfo`` or
``memory.stat``, then its parsing with cold caches), seven of them several hundred
microseconds, all of it time the loop could not run anything else. Here the loop
only queues the pass and takes the finished figures: its own time per sample is the
hand-over, and a task that becomes ready meanwhile waits at most for the thread's
longest stretch between two reads (each ``pread`` releases the GIL), not for the
whole pass. The thread is the sampler's alone, not a pool's, so a service that fills
anyio's or asyncio's worker threads cannot delay its own sampling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import weakref
from typing import TYPE_CHECKING, TypeAlias, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("ReadThread",)

T = TypeVar("T")

_Outcome: TypeAlias = tuple[bool, object]
_Request: TypeAlias = tuple[
    "Callable[[], object]", asyncio.AbstractEventLoop, "asyncio.Future[_Outcome]"
]

_JOIN_TIMEOUT = 5.0  # seconds close() waits for a pass in flight (each is microseconds)


def _settle(future: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
    if not future.done():  # else the caller was cancelled: nobody waits for it
        future.set_result(outcome)


class ReadThread:
    """
    One daemon thread running read passes, one at a time, for awaiting callers.

    :attr:`lock` is for the owner's reads made elsewhere, and its closing of what the
    passes read. In a child made by ``os.fork()`` the thread does not exist: there
    the read thread counts as stopped and the lock is a new one (the thread may have
    held it at the fork), so the owner reads in the caller's thread.
    """

    def __init__(self, name: str = "resource-supervisor sampler") -> None:
        self._name = name
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
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

    async def run(self, func: Callable[[], T]) -> T:
        """
        Run ``func()`` in the thread and return its result (or raise what it raised).

        Raises:
            RuntimeError: If the thread is not started.

        Cancellation:
            Stops waiting at once; the pass runs to its end in the thread and its
            outcome is dropped.
        """
        if self._thread is None:
            raise RuntimeError("the read thread is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Outcome] = loop.create_future()
        self._requests.put((func, loop, future))
        ok, value = await future
        if not ok:
            assert isinstance(value, BaseException)
            try:
                raise value
            finally:
                del value  # no frame <-> traceback cycle
        return cast("T", value)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            func, loop, future = request
            try:
                outcome: _Outcome = (True, func())
            except BaseException as exc:  # noqa: BLE001 - raised in the awaiting task
                outcome = (False, exc)
            # RuntimeError: the loop closed while the pass ran; nobody waits for it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, outcome)
            del request, func, loop, future, outcome


_ALL: weakref.WeakSet[ReadThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for reader in list(_ALL):
        reader._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
