"""
The local process lane: CPU work on single-worker ``ProcessPoolExecutor`` slots.

Covers: :class:`ProcessLane` (``run``, ``map``, pressure, statistics, lifecycle):
its state, the queue, and dispatching queued calls to free slots in batches.
The rest of the class lives in one mixin per concept: a call checked, pickled,
admitted and queued (:mod:`._submission`), outcomes delivered and a slot's next
step (:mod:`._delivery`), slots started, retired, dead and reaped
(:mod:`._slot_life`), the sizing rules applied (:mod:`._resizing`), and giving up
calls and killing workers: cancellation, timeouts, memory relief
(:mod:`._kills`). Does not cover: a slot's state, channel and progress frames
(:mod:`._slot`), starting and stopping slots off the loop (:mod:`._launcher`),
the lane's private forkserver (:mod:`._forkserver`), the pure rules for batches
(:mod:`._dispatch`), sizing (:mod:`._sizing`) and recycling (:mod:`._recycling`),
the statistics view (:mod:`._stats`), chunked maps (:mod:`.._mapping`), pickling
(:mod:`.._pickling`), the worker side (:mod:`._worker`), the thread lane
(:mod:`.._threads`) or the Dask backend (:mod:`.._dask._lane`); the public facade
is ``Executors`` (:mod:`.._executors`).

Design
------
A bare ``ProcessPoolExecutor`` never shrinks, and one dead worker breaks the whole
pool and fails every pending future. So each worker *slot* is its own
``ProcessPoolExecutor(max_workers=1)``: growing and shrinking is adding and
retiring slots, and a crash breaks only its own slot. The lane keeps the queue and
hands a slot only what that slot runs next, so it always knows what runs where.
A free slot receives the calls waiting at that moment (up to
:data:`._protocol.MAX_BATCH`, only while calls are measured to be short) as one
batch frame on its call pipe, written on the loop; the worker's serving loop reads
it (the fast path, see :mod:`._delivery`). How workers start (a private
forkserver by default) and when the lane's tasks run: :mod:`._slot_life`.

Cancellation: a call cancelled while queued, or withdrawn from a batch before it
started, never runs. A call cancelled while running: the caller gets the
cancellation at once, and the worker is killed and replaced, so nothing runs
unobserved and the slot is free promptly (calls behind it in its batch go back to
the queue). Map chunks (:meth:`ProcessLane.map`) are the exception: a running
chunk is left to finish and its results are dropped, so leaving a map early does
not kill workers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import time
from typing import TYPE_CHECKING, Final, Self, TypeVar, cast

import anyio

from ..._exceptions import SupervisorClosedError
from ..._lifecycle import AsyncClosable
from ..._snapshot import PressureLevel
from .._mapping import map_chunked
from .._pickling import by_value_serializer
from . import _worker
from ._delivery import LaneDelivery
from ._dispatch import batch_size
from ._headroom import MemoryHeadroom
from ._kills import LaneKills
from ._launcher import SlotLauncher
from ._lifeline import Lifeline
from ._recycling import calls_left
from ._resizing import LaneResizing
from ._slot import LIVE_STATES, Call, Slot, SlotState
from ._slot_life import LaneSlotLife
from ._stats import LaneCounters, ProcessLaneStatistics, lane_snapshot_metrics, lane_statistics
from ._submission import LANE, LaneSubmission
from ._worker_memory import OomKillCounter, measure_workers

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping

    from ..._config import ConcurrencySettings
    from ..._snapshot import MetricValue
    from ._cpu_budget import CpuBudget

__all__ = ("ProcessLane", "ProcessLaneStatistics")

T = TypeVar("T")
R = TypeVar("R")

_SETTLE_SECONDS: Final = 5.0
"""Default time NORMAL must hold before the lane grows back to full size."""


class ProcessLane(
    LaneSubmission, LaneDelivery, LaneSlotLife, LaneResizing, LaneKills, AsyncClosable
):
    """
    Run picklable CPU-bound calls on worker processes, one single-worker
    ``ProcessPoolExecutor`` per worker slot (see the module docstring).

    Use as ``async with ProcessLane(settings, max_workers=n) as lane:``, or create
    it and ``await lane.aclose()`` when done; nothing starts before the first call.
    """

    name = "local"

    def __init__(
        self,
        settings: ConcurrencySettings,
        *,
        max_workers: int,
        clock: Callable[[], float] = time.monotonic,
        settle_seconds: float = _SETTLE_SECONDS,
        target_chunk_seconds: float = 0.02,
        headroom: MemoryHeadroom | None = None,
        cpu_budget: CpuBudget | None = None,
    ) -> None:
        """
        Create the lane; no process or task starts here.

        Args:
            settings: ``start_method``, ``idle_timeout``, ``queue_limit``,
                ``max_tasks_per_worker``, ``worker_max_rss_bytes``, ``serializer``
                and ``prestart_process_lane`` are used.
            max_workers: Most worker processes (the supervisor resolves ``"auto"``).
            clock: Monotonic clock for idle timeouts and pressure hysteresis.
            settle_seconds: How long pressure must be NORMAL before growing back.
            target_chunk_seconds: Maps size chunks to take about this long.
            headroom: Reads the memory left for new workers; ``None`` reads this
                process's own cgroup and ``/proc/meminfo``.
            cpu_budget: The container's CPU tokens shared with the other server
                processes (multi-process mode): one is held per worker; ``None``
                for no container bound.

        Raises:
            ValueError: If *max_workers* is below 1.
            ImportError: If ``serializer`` is ``"cloudpickle"`` and it is not installed.
        """
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._settings = settings
        self._max_workers = max_workers
        self._budget = cpu_budget
        self._clock = clock
        self._settle_seconds = settle_seconds
        self._target_chunk_seconds = target_chunk_seconds
        self._queue: collections.deque[Call] = collections.deque()
        self._slots: list[Slot] = []
        self._level = PressureLevel.NORMAL
        self._calm_since: float | None = None
        self._target = 0
        self._call_seconds: float | None = None  # moving mean of worker-side call time
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifeline = Lifeline()  # workers exit when the service dies
        self._launcher = SlotLauncher(
            settings.start_method,
            ("__main__", _worker.__name__),  # the worker side only: a light import
            threads=max(2, max_workers),
            lifeline=self._lifeline,
            oom_score_adj=settings.worker_oom_score_adj,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._sleep_until = -math.inf  # when the maintainer wakes by itself
        self._wakeup: asyncio.Event | None = None
        self._counts = LaneCounters()
        self._headroom = MemoryHeadroom() if headroom is None else headroom
        self._forked = False
        self._oom = OomKillCounter()
        self._by_value = by_value_serializer(settings.serializer)

    # -- context manager -----------------------------------------------------------
    async def __aenter__(self) -> Self:
        """
        Return the lane; workers start on first use, or now with
        ``prestart_process_lane`` (one worker, started in the background).

        Cancellation:
            Does nothing that can be cancelled; a prestarted worker is started by
            a lane task, which :meth:`aclose` waits for.
        """
        if self._settings.prestart_process_lane and not self._closed:
            self._ensure_started()
            self._prestart()
        return self

    # -- public API --------------------------------------------------------------------
    async def run(
        self,
        func: Callable[..., T],
        args: tuple[object, ...],
        *,
        timeout: float | None,  # noqa: ASYNC109 - the ProcessBackend contract: kill on expiry
    ) -> T:
        """
        Run ``func(*args)`` in a worker process and return its result.

        Args:
            func: A picklable (module-level) callable.
            args: Its positional arguments, picklable.
            timeout: Seconds the call may take from now, queueing included; ``None``
                for no limit.

        Returns:
            What ``func(*args)`` returned. An exception it raised propagates with its
            own type, its ``__cause__`` carrying the worker's traceback.

        Raises:
            UnpicklableError: If *func* or an argument cannot be pickled (before any
                worker is taken or started).
            OverloadedError: If pressure is CRITICAL and ``queue_limit`` calls wait.
            WorkerCrashedError: If the worker died while running this call.
            CallTimeoutError: If *timeout* expired: a queued call is dropped; a
                running call's worker is killed and replaced.
            SupervisorClosedError: If the lane is closed, or closes before the call
                finishes.

        Cancellation:
            Checked before the call is queued. A queued call that is cancelled is
            removed and never runs. Once it runs, the caller raises the cancellation
            at once, and the worker is killed and replaced (the slot is released
            when the kill is seen, within milliseconds); other calls handed to that
            worker but not started are queued again.
        """
        return cast("T", await self._submit(func, args, timeout=timeout, kill_on_cancel=True))

    def map(
        self,
        func: Callable[[T], R],
        items: Iterable[T] | AsyncIterable[T],
        *,
        ordered: bool,
        chunksize: int | None,
        max_in_flight: int | None,
    ) -> AsyncIterator[R]:
        """
        Map *func* over *items* in worker processes, lazily and in chunks.

        Args:
            func: A picklable callable of one argument.
            items: Any iterable or async iterable, consumed as chunks are sent.
            ordered: Yield in input order (``True``) or as chunks complete.
            chunksize: Fixed items per chunk; ``None`` sizes chunks from the
                measured time per item (see :func:`.._mapping.map_chunked`).
            max_in_flight: Chunks sent and not yet consumed; ``None`` = 2 x workers.

        Returns:
            An async iterator of results. Leaving it early (``break``, ``aclose``,
            cancellation) drops the queued chunks and lets running ones finish
            unobserved; the iterator's errors are those of :meth:`run`.
        """
        return map_chunked(
            self._run_chunk,
            func,
            items,
            ordered=ordered,
            chunksize=chunksize,
            max_in_flight=max_in_flight if max_in_flight is not None else 2 * self._max_workers,
            target_chunk_seconds=self._target_chunk_seconds,
            workers=self._max_workers,
        )

    def set_pressure(self, level: PressureLevel) -> None:
        """
        Set the pressure level: it caps the workers and, at CRITICAL, admission.

        At CRITICAL the lane keeps one worker (idle ones retire now, busy ones after
        their call) and refuses calls beyond ``queue_limit`` queued ones. Back at
        NORMAL it grows again once the level has held for ``settle_seconds``.

        Args:
            level: The supervisor's current level.
        """
        level = PressureLevel(level)
        if level == self._level:
            return
        if level > PressureLevel.NORMAL:
            self._calm_since = None
        elif self._level > PressureLevel.NORMAL:
            self._calm_since = self._clock()
        self._level = level
        if self._loop is not None and not self._closed:
            if level >= PressureLevel.CRITICAL:
                self._relieve_memory()
            self._resize()
            self._wake()

    def metrics(self) -> Mapping[str, MetricValue]:
        """
        Return flat ``process_*`` metrics; cheap, never blocks.

        Reads each worker's resident memory (a small ``/proc`` read per worker) and,
        at CRITICAL, kills the largest worker if it holds more than the service.

        Returns:
            Metric name to value (``process_lane_backend`` is ``"local"``).
        """
        if not self._closed and self._loop is not None:
            measure_workers(s for s in self._slots if s.state in LIVE_STATES)
            if self._level >= PressureLevel.CRITICAL:
                self._relieve_memory()
        data = lane_snapshot_metrics(
            self._slots,
            target=self._target,
            queue_depth=len(self._queue),
            counters=self._counts,
            backend=self.name,
        )
        data.update(self._launcher.metrics())
        return data

    def statistics(self) -> ProcessLaneStatistics:
        """
        Return the lane's counters and current sizes.

        Returns:
            A frozen :class:`ProcessLaneStatistics`.
        """
        return lane_statistics(
            self._slots, target=self._target, queue_depth=len(self._queue), counters=self._counts
        )

    async def aclose(self) -> None:
        """
        Close the lane: fail waiting calls, kill and reap every worker, stop the
        lane's forkserver.

        Idempotent. It always closes, even when cancelled or when a step fails
        ("failure to be graceful, not failure to close"): the work runs shielded.
        Queued and running calls raise :class:`SupervisorClosedError`
        (``"process lane"``); so does every later :meth:`run`.

        Cancellation:
            Shielded: a cancelled ``aclose`` still kills and reaps every worker and
            stops the forkserver, then the cancellation propagates.
        """
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            error = SupervisorClosedError(LANE)
            while self._queue:
                self._finish(self._queue.popleft(), error)
            for slot in list(self._slots):
                for call in slot.in_flight:
                    self._finish(call, error)
                slot.in_flight.clear()
                self._stop_reading(slot)
                if slot.state is not SlotState.DEAD:
                    self._kill(slot, "close")
            # only the maintainer waits forever; start, retire and reap tasks are
            # short and shielded, so they are awaited rather than cancelled
            if self._maintainer is not None:
                self._maintainer.cancel()
            while self._tasks:
                await asyncio.wait(list(self._tasks))
            for slot in list(self._slots):
                await self._launcher.shutdown(slot, self._loop)
            self._slots.clear()
            await self._launcher.aclose()
            self._lifeline.close()
            self._headroom.close()

    def forget_after_fork(self) -> None:
        """
        In a child forked from the service: forget the parent's lane (see :mod:`._fork_guard`).

        Closes the child's copies of the lane's descriptors, drops its slots and
        queue without touching the parent's workers or futures, and refuses
        every later call with :class:`RuntimeError`.
        """
        self._forked = True
        self._closed = True
        self._lifeline.close()
        self._launcher.forget_after_fork()
        for slot in self._slots:
            for fd in (slot.reader_fd, slot.writer_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            slot.reader_fd = slot.writer_fd = -1
            slot.executor = None
            slot.serving = None
        self._slots.clear()
        self._queue.clear()
        self._tasks.clear()
        self._maintainer = None
        self._loop = None
        self._headroom.close()

    # -- dispatching -------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand queued calls to idle slots, several per slot while calls are short."""
        while self._queue:
            idle = [s for s in self._slots if s.state is SlotState.IDLE]
            if not idle:
                return
            starting = sum(1 for s in self._slots if s.state is SlotState.STARTING)
            slot = idle[-1]
            size = batch_size(
                self._queue,
                call_seconds=self._call_seconds,
                free_slots=len(idle) + starting,
                quota_left=calls_left(slot.calls_done, self._settings.max_tasks_per_worker),
            )
            self._send(slot, [self._queue.popleft() for _ in range(size)])

    def _send(self, slot: Slot, batch: list[Call]) -> None:
        assert self._loop is not None
        slot.send(batch)
        if slot.serving is None and not self._serve(slot):
            return
        if not slot.flush():  # the rest goes as the worker reads
            self._loop.add_writer(slot.writer_fd, self._on_writable, slot)

    def _on_writable(self, slot: Slot) -> None:
        if slot.flush() and self._loop is not None:
            self._loop.remove_writer(slot.writer_fd)
