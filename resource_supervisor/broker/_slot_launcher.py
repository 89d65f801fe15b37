"""
Starting and stopping the local process lane's worker slots, off the event loop.

Covers: :class:`SlotLauncher` (the lane's ``multiprocessing`` context, created on
first use, with a private forkserver for ``"forkserver"``; opening and shutting
down slots in worker threads under a shield; stopping the forkserver),
:func:`kill_worker` and :func:`stop_reading`. Does not cover: what a slot is and
the blocking start and stop themselves (:mod:`._slots`), the forkserver
(:mod:`._forkserver`), the serving loop a stop frame ends (:mod:`._worker`), or
when slots start, retire or die (:mod:`._processes`, :mod:`._sizing`).

The blocking work runs in threads of the launcher's own capacity limiter, so
starting and reaping workers never waits behind the default thread pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import signal
from typing import TYPE_CHECKING

import anyio

from ._forkserver import LaneForkServerContext
from ._slots import open_slot, shutdown_slot
from ._worker import STOP_FRAME

if TYPE_CHECKING:
    import asyncio

    from ._lifeline import Lifeline
    from ._slots import OpenedSlot, Slot

__all__ = ("SlotLauncher", "kill_worker", "stop_reading")


def kill_worker(pid: int) -> None:
    """
    Send SIGKILL to worker *pid*; a worker already gone is fine.

    Args:
        pid: The worker's process id (> 0).
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_reading(loop: asyncio.AbstractEventLoop | None, slot: Slot) -> None:
    """
    Stop watching the slot's pipes on *loop*, if they are watched.

    Args:
        loop: The lane's event loop; ``None`` (never started) or closed is fine.
        slot: The slot.
    """
    if loop is None or loop.is_closed():
        return
    if slot.reader_fd >= 0:
        loop.remove_reader(slot.reader_fd)
    if slot.writer_fd >= 0:
        loop.remove_writer(slot.writer_fd)


def _stop_serving(loop: asyncio.AbstractEventLoop | None, slot: Slot) -> None:
    """Ask the worker's serving loop to return (best effort) and close the call pipe."""
    stop_reading(loop, slot)
    if not slot.outgoing:  # else a stop frame would land inside a batch
        with contextlib.suppress(OSError):  # full (the worker is stuck or dead) or broken
            os.write(slot.writer_fd, STOP_FRAME)
    slot.outgoing.clear()
    os.close(slot.writer_fd)  # end of file, if the worker holds the only other end
    slot.writer_fd = -1


class SlotLauncher:
    """Start and stop one lane's worker slots; nothing starts before :meth:`open`."""

    def __init__(
        self,
        start_method: str,
        preload: tuple[str, ...],
        *,
        threads: int,
        lifeline: Lifeline | None = None,
        oom_score_adj: int | None = None,
    ) -> None:
        """
        Create the launcher; no process or thread starts here.

        Args:
            start_method: ``multiprocessing`` start method of the workers.
            preload: Modules the lane's forkserver imports once (``"forkserver"``).
            threads: Most slots started or stopped at the same time.
            lifeline: Handed to every worker (see :mod:`._lifeline`), or ``None``.
            oom_score_adj: Each worker's ``oom_score_adj`` (``None``: inherited).
        """
        self._start_method = start_method
        self._preload = preload
        self._context: multiprocessing.context.BaseContext | None = None
        self._limiter = anyio.CapacityLimiter(threads)
        self._lifeline = lifeline
        self._oom_score_adj = oom_score_adj

    def _mp_context(self) -> multiprocessing.context.BaseContext:
        if self._context is None:
            if self._start_method == "forkserver":
                self._context = LaneForkServerContext(self._preload)
            else:
                self._context = multiprocessing.get_context(self._start_method)
        return self._context

    async def open(self) -> OpenedSlot:
        """
        Start a slot's executor and worker and wait until the worker answers.

        Returns:
            What :func:`._slots.open_slot` started.

        Raises:
            Exception: Whatever creating the context or :func:`._slots.open_slot`
                raised (e.g. ``TimeoutError``, ``BrokenProcessPool``).

        Cancellation:
            Shielded: a started worker must never be lost, so the start completes
            and its result is returned even if the caller was cancelled meanwhile.
        """
        with anyio.CancelScope(shield=True):
            opened = await anyio.to_thread.run_sync(
                open_slot,
                self._mp_context(),
                self._lifeline,
                self._oom_score_adj,
                limiter=self._limiter,
            )
        return opened

    async def shutdown(self, slot: Slot, loop: asyncio.AbstractEventLoop | None) -> None:
        """
        End the worker's serving loop, stop the slot's executor and reap its worker,
        then close the result pipe.

        Args:
            slot: The slot; its executor is taken at once, so a second call only
                closes what is left.
            loop: The lane's event loop, to stop watching the pipes.

        Cancellation:
            The executor's shutdown and the reaping are shielded; the pipes are
            closed on the loop, the call pipe first (after a stop frame, so the
            serving loop returns and the executor can stop) and the result pipe
            afterwards, so no callback reads or writes a closed or reused fd.
        """
        executor, slot.executor = slot.executor, None
        if slot.writer_fd >= 0:
            _stop_serving(loop, slot)
        with anyio.CancelScope(shield=True):
            if executor is not None:
                await anyio.to_thread.run_sync(
                    shutdown_slot, executor, slot.process, limiter=self._limiter
                )
        slot.serving = None  # its done callback refers to the slot: no cycle outlives it
        stop_reading(loop, slot)
        if slot.reader_fd >= 0:
            os.close(slot.reader_fd)
            slot.reader_fd = -1

    def forget_after_fork(self) -> None:
        """
        In a child forked from the service: drop the parent's forkserver unstopped.

        The child closes its copy of the forkserver's "alive" pipe, so the parent's
        :meth:`aclose` (which waits for the forkserver to exit) does not wait for
        the child (see :mod:`._fork_guard`).
        """
        context, self._context = self._context, None
        server = getattr(context, "server", None)
        alive = getattr(server, "_forkserver_alive_fd", None)
        if isinstance(alive, int):
            with contextlib.suppress(OSError):
                os.close(alive)
            server._forkserver_alive_fd = None  # type: ignore[union-attr]
            server._forkserver_pid = None  # type: ignore[union-attr]

    async def aclose(self) -> None:
        """
        Stop the lane's private forkserver, if one was started.

        Idempotent: stopping a stopped forkserver does nothing.

        Cancellation:
            Not shielded here: the lane calls it inside its own shielded close.
        """
        if isinstance(self._context, LaneForkServerContext):
            await anyio.to_thread.run_sync(self._context.stop, limiter=self._limiter)
