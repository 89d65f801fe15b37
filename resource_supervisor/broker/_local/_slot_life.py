"""
Slot life in the local process lane: starting, retiring, deaths and reaping.

Covers: :class:`LaneSlotLife`, the part of :class:`._lane.ProcessLane` that
starts the lane's tasks on first use, starts a slot's worker, retires a slot,
handles a worker's death once seen (finished calls delivered, the running one
failed, the ones it never started queued again) and reaps it, then forgets the
slot. Does not cover: starting and stopping a slot's executor off the loop
(:mod:`._launcher`), a slot's state and its allowed moves (:mod:`._slot`), which
calls a dead worker ran (:func:`._dispatch.sort_unfinished`, pure), how many
slots the lane wants (:mod:`._lane`, :mod:`._sizing`) or killing workers
(:mod:`._kills`).

Start method: ``forkserver`` by default on Linux. ``fork`` copies a process that
runs an event loop and threads (locks held by other threads stay locked in the
child); ``spawn`` starts a fresh interpreter per worker, which is slower. Each
lane owns a private forkserver (:mod:`._forkserver`) so that
:meth:`._lane.ProcessLane.aclose` can stop it: nothing the lane started outlives it.

Lifecycle: the lane starts nothing until the first call (no process, no task).
Background work (starting workers, retiring idle ones, reaping dead ones) runs in
asyncio tasks the lane owns; ``aclose`` stops them. A child forked from the
service forgets the lane (:mod:`._fork_guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

import anyio

from ..._exceptions import WorkerCrashedError
from ._dispatch import sort_unfinished
from ._fork_guard import guard_lane
from ._launcher import kill_worker, stop_reading
from ._slot import Slot, SlotState
from ._spill import sweep_spills

if TYPE_CHECKING:
    import collections
    from collections.abc import Callable, Coroutine

    from ._launcher import SlotLauncher
    from ._slot import Call
    from ._stats import LaneCounters
    from ._worker_memory import OomKillCounter

__all__ = ("LaneSlotLife",)

_logger = logging.getLogger("resource_supervisor.broker")


class _Lane(Protocol):
    """What these methods use of the lane."""

    _clock: Callable[[], float]
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool
    _queue: collections.deque[Call]
    _slots: list[Slot]
    _tasks: set[asyncio.Task[None]]
    _maintainer: asyncio.Task[None] | None
    _wakeup: asyncio.Event | None
    _counts: LaneCounters
    _launcher: SlotLauncher
    _oom: OomKillCounter

    def forget_after_fork(self) -> None: ...
    def _spawn(
        self, coro: Coroutine[object, object, None], *, maintainer: bool = False
    ) -> None: ...
    def _task_done(self, task: asyncio.Task[None]) -> None: ...
    def _wake(self) -> None: ...
    async def _maintain(self) -> None: ...
    async def _sweep_spills(self) -> None: ...
    async def _start_oom_count(self) -> None: ...
    async def _start_slot(self, slot: Slot) -> None: ...
    async def _reap(self, slot: Slot, running: Call | None) -> None: ...
    async def _retire_slot(self, slot: Slot) -> None: ...
    def _forget(self, slot: Slot) -> None: ...
    def _stop_reading(self, slot: Slot) -> None: ...
    def _on_readable(self, slot: Slot) -> None: ...
    def _drain(self, slot: Slot) -> bool: ...
    def _finish(self, call: Call, error: BaseException | None, value: object = None) -> bool: ...
    def _fail_crashed(
        self, call: Call, exitcode: int | None, detail: str, reason: str | None = None
    ) -> None: ...
    def _requeue(self, calls: list[Call]) -> None: ...
    def _dispatch(self) -> None: ...
    def _resize(self) -> None: ...


class LaneSlotLife:
    """Mixin of :class:`._lane.ProcessLane`: slots started, retired, dead and reaped."""

    # set here, declared by the lane
    _loop: asyncio.AbstractEventLoop | None
    _maintainer: asyncio.Task[None] | None
    _wakeup: asyncio.Event | None

    # -- the lane's tasks --------------------------------------------------------------
    def _prestart(self: _Lane) -> None:
        """Start one worker (and the forkserver) now, so the first call finds it warm."""
        if not self._slots:
            slot = Slot()
            self._slots.append(slot)
            self._spawn(self._start_slot(slot))

    def _ensure_started(self: _Lane) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            guard_lane(self)
            self._spawn(self._start_oom_count())
            self._wakeup = asyncio.Event()
            self._spawn(self._maintain(), maintainer=True)
            self._spawn(self._sweep_spills())
        return self._loop

    async def _start_oom_count(self: _Lane) -> None:
        """Take the cgroup's OOM-kill count as the baseline (in a thread: it reads files)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._oom.start)

    async def _sweep_spills(self: _Lane) -> None:
        """Remove spill files a dead service left behind (in a thread: a directory scan)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sweep_spills)

    def _spawn(
        self: _Lane, coro: Coroutine[object, object, None], *, maintainer: bool = False
    ) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if maintainer:
            self._maintainer = task

    def _task_done(self: _Lane, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _logger.error("process lane task failed", exc_info=task.exception())

    def _wake(self: _Lane) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- deaths and retirement ---------------------------------------------------------
    def _slot_died(self: _Lane, slot: Slot) -> None:
        """The worker is gone: deliver finished calls, fail the running one, requeue."""
        if slot.state is SlotState.DEAD:
            return
        self._drain(slot)
        if slot.reading_big:  # a thread still reads a frame: decided once it is done
            slot.dying = True
            return
        intentional = slot.kill_reason is not None or slot.state is SlotState.RETIRING
        slot.mark_dead()
        self._stop_reading(slot)
        started = slot.progress.value if slot.progress is not None else -1
        running, not_started, lost = sort_unfinished(slot.in_flight, started)
        for call in lost:
            self._fail_crashed(call, None, "result lost with the worker")
        slot.in_flight.clear()
        if not intentional:
            self._counts.crashed += 1
            slot.crashed = True
        self._requeue(not_started)
        self._spawn(self._reap(slot, running))
        self._dispatch()
        self._resize()

    async def _reap(self: _Lane, slot: Slot, running: Call | None) -> None:
        if slot.crashed:  # did the kernel's OOM killer end it? (in a thread: it reads a file)
            with anyio.CancelScope(shield=True):
                oom_killed = await anyio.to_thread.run_sync(self._oom.rose)
            if oom_killed:
                self._counts.oom_kills += 1
                slot.death_reason = "oom_kill"
        await self._launcher.shutdown(slot, self._loop)
        if running is not None and not running.future.done():
            process = slot.process
            exitcode = process.exitcode if process is not None else None
            detail = f"pid {slot.pid}"
            if slot.death_reason == "memory_pressure":
                detail += f", {slot.rss_bytes >> 20} MiB resident, killed at CRITICAL pressure"
            self._fail_crashed(running, exitcode, detail, slot.death_reason)
        self._forget(slot)

    def _forget(self: _Lane, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self._slots.remove(slot)
        self._wake()

    def _retire(self: _Lane, slot: Slot) -> None:
        slot.mark_retiring()
        self._stop_reading(slot)
        self._spawn(self._retire_slot(slot))

    async def _retire_slot(self: _Lane, slot: Slot) -> None:
        await self._launcher.shutdown(slot, self._loop)
        slot.mark_dead()
        self._forget(slot)

    def _stop_reading(self: _Lane, slot: Slot) -> None:
        stop_reading(self._loop, slot)

    # -- starting slots ----------------------------------------------------------------
    async def _start_slot(self: _Lane, slot: Slot) -> None:
        try:
            opened = await self._launcher.open(slot)  # shielded: a started worker is kept
        except Exception as exc:  # noqa: BLE001 - reported to the calls that waited for it
            slot.mark_dead()
            self._forget(slot)
            if not any(s.state is not SlotState.DEAD for s in self._slots):
                error = WorkerCrashedError("<worker start>", detail=f"cannot start: {exc!r}")
                while self._queue:
                    call = self._queue.popleft()
                    if self._finish(call, error):
                        self._counts.failed += 1
            return
        slot.rss_bytes = opened.rss_bytes  # what the next worker is judged by
        if self._closed or slot.kill_reason is not None:
            slot.mark_killed(slot.kill_reason)
            kill_worker(slot.pid)
            await self._launcher.shutdown(slot, self._loop)
            self._forget(slot)
            return
        assert self._loop is not None
        self._loop.add_reader(slot.reader_fd, self._on_readable, slot)
        slot.mark_idle(self._clock())
        self._dispatch()
        self._wake()
