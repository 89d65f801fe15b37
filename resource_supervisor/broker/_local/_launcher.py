"""
Starting and stopping the local process lane's worker slots, off the event loop.

Covers: :class:`SlotLauncher` (the lane's ``multiprocessing`` context, created on
first use, with a private forkserver for ``"forkserver"``; opening and shutting
down slots in worker threads under a shield; stopping the forkserver),
:func:`kill_worker` and :func:`stop_reading`. Does not cover: what a slot is and
the blocking start and stop themselves (:mod:`._slot`), the forkserver
(:mod:`._forkserver`), the serving loop a stop frame ends (:mod:`._worker`), or
when slots start, retire or die (:mod:`._slot_life`, :mod:`._resizing`).

The blocking work runs in threads of the launcher's own capacity limiter, so
starting and reaping workers never waits behind the default thread pool.

Version gate: the launcher asks :func:`._mp_internals.check_internals` once which
``multiprocessing`` internals it may use. Where they differ from those the lane
was written for, ``"forkserver"`` falls back to the standard library's own
forkserver context (shared, so it outlives the lane), the lane logs what differs
once, and its metrics count them (``process_lane_fallback_internals``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
import warnings
from typing import TYPE_CHECKING, Final

import anyio

from ..._lifecycle import AsyncClosable
from ..._main_guard import UnguardedMainError, check_marker, clear_marker
from . import _forkserver, _lifeline, _shared_progress
from ._forkserver import LaneForkServerContext
from ._mp_internals import check_internals
from ._protocol import STOP_FRAME
from ._slot import open_slot, shutdown_slot

if TYPE_CHECKING:
    import asyncio

    from ..._snapshot import MetricValue
    from ._lifeline import Lifeline
    from ._mp_internals import LaneInternals
    from ._slot import OpenedSlot, Slot

__all__ = ("WORKER_PRELOAD", "SlotLauncher", "kill_worker", "stop_reading")

_logger = logging.getLogger("resource_supervisor.broker")

WORKER_PRELOAD: Final = (
    "concurrent.futures.process",
    _forkserver.__name__,
    _lifeline.__name__,
    _shared_progress.__name__,
)
"""
Modules every worker needs, imported once by the lane's forkserver so that
forked workers start with them loaded: the executor's worker side, the process
class a worker is unpickled as, the lifeline watcher and the progress memory
(the lane's own worker module comes in the preload the lane passes). All light:
none imports ``ctypes``, anyio, psutil or pydantic.
"""


_FORK_STARTS: Final = threading.Lock()
"""Held while a slot of any lane starts with ``"fork"``, until it adopted its pipes."""


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


def _refusal() -> UnguardedMainError | None:
    """The refusal a worker left in the main-guard marker, if any (blocking: it stats a file)."""
    try:
        check_marker()
    except UnguardedMainError as refused:
        return refused
    return None


def _stop_serving(loop: asyncio.AbstractEventLoop | None, slot: Slot) -> None:
    """Ask the worker's serving loop to return (best effort) and close the call pipe."""
    stop_reading(loop, slot)
    if not slot.outgoing:  # else a stop frame would land inside a batch
        with contextlib.suppress(OSError):  # full (the worker is stuck or dead) or broken
            os.write(slot.writer_fd, STOP_FRAME)
    slot.outgoing.clear()
    os.close(slot.writer_fd)  # end of file, if the worker holds the only other end
    slot.writer_fd = -1


class SlotLauncher(AsyncClosable):
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
        if start_method == "fork":
            warnings.warn(
                "start_method 'fork' is deprecated since 0.2 and will be removed: the "
                "service always runs threads, and forking a threaded process can "
                "deadlock the child; use 'forkserver' (the default) or 'spawn'",
                DeprecationWarning,
                stacklevel=2,
            )
        self._start_method = start_method
        self._preload = preload
        self._context: multiprocessing.context.BaseContext | None = None
        self._limiter = anyio.CapacityLimiter(threads)
        self._lifeline = lifeline
        self._oom_score_adj = oom_score_adj
        self._internals = check_internals()
        self._reported = False
        self._refused: UnguardedMainError | None = None
        self._context_lock = threading.Lock()

    @property
    def internals(self) -> LaneInternals:
        """What the version gate allowed (see :mod:`._mp_internals`)."""
        return self._internals

    def metrics(self) -> dict[str, MetricValue]:
        """
        Return ``process_lane_fallback_internals``: how many of the internals the
        lane relies on differ here (0: none; the log names them).

        Returns:
            One metric for the lane's snapshot.
        """
        return {"process_lane_fallback_internals": len(self._internals.missing)}

    def _mp_context(self) -> multiprocessing.context.BaseContext:
        with self._context_lock:  # slots start in several threads at once
            return self._make_context()

    def _make_context(self) -> multiprocessing.context.BaseContext:
        if self._context is None:
            clear_marker()  # stale: no worker of this lane has started yet
            internals = self._internals
            if internals.missing and not self._reported:
                self._reported = True
                _logger.warning(
                    "process lane: multiprocessing internals differ from those it was "
                    "written for (%s); it runs on the standard library's paths%s",
                    "; ".join(internals.missing),
                    ""
                    if internals.private_forkserver or self._start_method != "forkserver"
                    else ", with the interpreter-wide forkserver, which outlives the lane",
                )
            if self._start_method == "forkserver" and internals.private_forkserver:
                self._context = LaneForkServerContext((*self._preload, *WORKER_PRELOAD))
            else:
                self._context = multiprocessing.get_context(self._start_method)
        return self._context

    def kill(self, slot: Slot) -> None:
        """
        Kill the slot's worker now (non-blocking); a worker already gone is fine.

        Where the public ``ProcessPoolExecutor.kill_workers()`` exists (3.14+) it
        kills the slot's one worker; elsewhere SIGKILL goes to the worker's pid.

        Args:
            slot: A started slot.
        """
        executor = slot.executor
        if self._internals.kill_workers and executor is not None:
            kill_workers = getattr(executor, "kill_workers", None)
            if callable(kill_workers):  # pragma: no cover - CPython 3.14+ only
                kill_workers()
                return
        if slot.pid:
            kill_worker(slot.pid)

    async def open(self, slot: Slot) -> OpenedSlot:
        """
        Start a slot's executor and worker, wait until the worker answers, and let
        *slot* adopt them (:meth:`._slot.Slot.adopt`).

        With ``"fork"`` the slots of every lane of the process start one at a time
        (:data:`_FORK_STARTS`): a worker forked while another slot's pipes are still
        unowned would hold copies of them, and a pipe one of its ends stays open in
        another worker never reports its own worker's death. Once *slot* has adopted
        its pipes, a later fork closes them in the child (:mod:`._fork_guard`).

        Args:
            slot: The slot being started (in the lane's list, without a worker yet).

        Returns:
            What :func:`._slot.open_slot` started.

        Raises:
            UnguardedMainError: If a worker re-ran a main module without an
                ``if __name__ == "__main__":`` guard (see :mod:`..._main_guard`);
                from then on every call raises it at once and starts nothing.
            Exception: Whatever creating the context or :func:`._slot.open_slot`
                raised (e.g. ``TimeoutError``, ``BrokenProcessPool``).

        Cancellation:
            Shielded: a started worker must never be lost, so the start completes
            and its result is returned even if the caller was cancelled meanwhile.
        """
        if self._refused is not None:
            raise UnguardedMainError(self._refused.main)
        try:
            with anyio.CancelScope(shield=True):
                opened = await anyio.to_thread.run_sync(
                    self._open_slot, slot, limiter=self._limiter
                )
        except Exception as exc:
            if self._refused is None:
                with anyio.CancelScope(shield=True):  # it stats a file: not on the loop
                    self._refused = await anyio.to_thread.run_sync(_refusal)
            if self._refused is not None:
                raise UnguardedMainError(self._refused.main) from exc
            raise
        return opened

    def _open_slot(self, slot: Slot) -> OpenedSlot:
        """Create the context on first use, open a slot, adopt it (blocking; in a thread)."""
        context = self._mp_context()
        with _FORK_STARTS if self._start_method == "fork" else contextlib.nullcontext():
            opened = open_slot(context, self._lifeline, self._oom_score_adj, self._internals)
            slot.adopt(opened)
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
        if self._context is not None:  # a refusing worker may have written it after the last start
            await anyio.to_thread.run_sync(clear_marker, limiter=self._limiter)
