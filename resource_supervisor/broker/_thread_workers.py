"""
The thread lane's workers: daemon threads serving the queue, outcomes back in batches.

Covers: :class:`ThreadLaneWorkers`, the part of :class:`._threads.ThreadLane` that
starts a worker on a daemon thread, runs its serving loop (take a queued call,
run it in the caller's context, retire when idle for ``idle_timeout`` or told to
stop), and hands finished calls back to the event loop, one
``loop.call_soon_threadsafe`` per batch of completions; :data:`THREAD_NAME`; and
:func:`anyio_worker`, which lets calls in a lane thread use ``anyio.from_thread``.
Does not cover: queueing a call, waiting for it, abandoning it, or closing the
lane (:mod:`._threads`), or the call record and its states (:mod:`._thread_call`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import TYPE_CHECKING, Final, Protocol

from ._thread_call import QUEUED, RUNNING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterator

    import anyio

    from ._thread_call import ThreadCall

__all__ = ("THREAD_NAME", "ThreadLaneWorkers", "anyio_worker")

THREAD_NAME: Final = "resource-supervisor thread lane"
"""Name a lane worker's thread carries while it serves the lane (restored after)."""


@contextlib.contextmanager
def anyio_worker(loop: asyncio.AbstractEventLoop | None) -> Iterator[None]:
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


class _Lane(Protocol):
    """What these methods use of the lane."""

    _idle_timeout: float
    _queue: queue.SimpleQueue[ThreadCall | None]
    _lock: threading.Lock
    _queued: int
    _threads: int
    _idle: int
    _closing: bool
    _done: list[ThreadCall]
    _waiting: set[ThreadCall]
    _flush_scheduled: bool
    _completed: int
    _failed: int
    _abandoned: int
    _loop: asyncio.AbstractEventLoop | None
    _stopped: anyio.Event | None
    _workers: set[threading.Thread]

    def _serve(self) -> None: ...
    def _serve_calls(self) -> bool: ...
    def _retire(self) -> bool: ...
    def _post(self, callback: Callable[[], object]) -> None: ...
    def _set_stopped(self) -> None: ...
    def _flush(self) -> None: ...
    def _deliver(self, call: ThreadCall) -> None: ...


class ThreadLaneWorkers:
    """Mixin of :class:`._threads.ThreadLane`: its worker threads and their outcomes."""

    # set here, declared by the lane
    _workers: set[threading.Thread]
    _done: list[ThreadCall]
    _flush_scheduled: bool

    # -- workers --------------------------------------------------------------------
    def _start_worker(self: _Lane) -> None:
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

    def _serve(self: _Lane) -> None:
        """The worker loop: run queued calls until told to stop or idle too long."""
        with anyio_worker(self._loop):
            stopped = self._serve_calls()
        if stopped:
            self._post(self._set_stopped)

    def _serve_calls(self: _Lane) -> bool:
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
                if call.state != QUEUED:
                    continue  # cancelled while queued, or failed by aclose()
                call.state = RUNNING
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

    def _retire(self: _Lane) -> bool:
        """Count this worker out (lock held); True if it was the last one at close."""
        self._threads -= 1
        self._idle -= 1
        return self._closing and self._threads == 0

    def _post(self: _Lane, callback: Callable[[], object]) -> None:
        """Schedule *callback* on the lane's loop from a lane thread."""
        assert self._loop is not None
        # RuntimeError: the loop is closed; an abandoned call outlived it, nobody waits.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _set_stopped(self: _Lane) -> None:
        assert self._stopped is not None
        self._stopped.set()

    # -- completions (event loop) ---------------------------------------------
    def _flush(self: _Lane) -> None:
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

    def _deliver(self: _Lane, call: ThreadCall) -> None:
        call.finished = True
        self._waiting.discard(call)
        future = call.future
        if not future.done():
            future.set_result(None)

    @staticmethod
    def _deliver_closed_out(call: ThreadCall) -> None:
        future = call.future
        if not future.done():
            future.set_result(None)
