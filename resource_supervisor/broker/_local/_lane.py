"""
The local process lane: CPU work on single-worker ``ProcessPoolExecutor`` slots.

Covers: :class:`ProcessLane` (``run``, ``map``, pressure, statistics, lifecycle):
the queue, dispatching batches to slots, crash isolation, per-call timeouts,
recycling and sizing decisions applied. Does not cover: a slot's state, channel
and progress frames (:mod:`._slot`), starting and stopping slots off the loop
(:mod:`._launcher`), the lane's private forkserver (:mod:`._forkserver`),
the pure rules for batches (:mod:`._dispatch`), sizing (:mod:`._sizing`) and
recycling (:mod:`._recycling`), the statistics view (:mod:`._stats`), chunked
maps (:mod:`.._mapping`), pickling (:mod:`.._pickling`), the worker side
(:mod:`._worker`), the thread lane (:mod:`.._threads`) or the Dask backend
(:mod:`.._dask._lane`); the public facade is ``Executors`` (:mod:`.._executors`). Giving
up calls and killing workers (cancellation, timeouts, memory relief) is the
:class:`._kills.LaneKills` mixin.

Pickling: a call is pickled on the event loop when its arguments are estimated
below :data:`.._pickling.OFFLOAD_BYTES` (a few microseconds, cheaper than a thread
handoff); bigger ones are pickled in a worker thread with their big buffers
written to a temporary file in pieces, so the loop is not held (see
:mod:`.._pickling`). Either way an unpicklable call fails before it is queued.
Outcomes up to 4 KiB are decoded on the loop; bigger ones come through a spill
file and are loaded in the executor's manager thread (:mod:`._big_outcome`).

Design
------
A bare ``ProcessPoolExecutor`` never shrinks, and one dead worker breaks the whole
pool and fails every pending future. So each worker *slot* is its own
``ProcessPoolExecutor(max_workers=1)``: growing and shrinking is adding and
retiring slots, and a crash breaks only its own slot. The lane keeps the queue and
hands a slot only what that slot runs next, so it always knows what runs where.

Fast path (see :mod:`._protocol` for the wire format, :mod:`._worker` for the
worker): each worker runs a serving loop (one long executor item) that reads calls
from the slot's call pipe, which the lane writes on the loop, so no call goes
through the executor's threads and queues. A free slot receives the calls waiting at
that moment (up to :data:`._protocol.MAX_BATCH`, only while calls are measured to
be short) as one batch frame. Each outcome comes back as one atomic frame on the slot's result
pipe, read directly on the event loop, and the worker publishes the number of
the call it is running in shared memory. After a crash the lane therefore knows
which calls finished (delivered), which one was running (fails with
:class:`WorkerCrashedError`) and which never started (queued again, first in
line). No call runs twice. The executor still owns the worker: it reports its
death (the serving item breaks) and reaps it.

Start method: ``forkserver`` by default on Linux. ``fork`` copies a process that
runs an event loop and threads (locks held by other threads stay locked in the
child); ``spawn`` starts a fresh interpreter per worker, which is slower. Each
lane owns a private forkserver (:mod:`._forkserver`) so that
:meth:`ProcessLane.aclose` can stop it: nothing the lane started outlives it.

Lifecycle: the lane starts nothing until the first call (no process, no task).
Background work (starting workers, retiring idle ones, reaping dead ones) runs in
asyncio tasks the lane owns; :meth:`ProcessLane.aclose` (or leaving ``async with``)
stops them. Use the lane from one event loop: a call from another loop is refused
before it is queued, and a child forked from the service forgets the lane
(:mod:`._fork_guard`).

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
import functools
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Final, Self, TypeVar, cast

import anyio

from ..._exceptions import (
    OverloadedError,
    SupervisorClosedError,
    WorkerCrashedError,
)
from ..._lifecycle import AsyncClosable
from ..._snapshot import PressureLevel
from .._mapping import map_chunked
from .._pickling import (
    OFFLOAD_BYTES,
    by_value_serializer,
    describe_callable,
    discard_spill,
    estimate_call_bytes,
    pickle_call,
    pickle_call_spilled,
    prepare_call,
)
from . import _worker
from ._big_outcome import BigOutcome, load_outcome
from ._cpu_budget import tokens_wanted
from ._dispatch import batch_size, sort_unfinished
from ._fork_guard import guard_lane
from ._headroom import MemoryHeadroom, startable_workers
from ._kills import LaneKills
from ._launcher import SlotLauncher, kill_worker, stop_reading
from ._lifeline import Lifeline
from ._protocol import Outcome
from ._recycling import calls_left, recycle_due, rss_bytes
from ._sizing import admits, target_workers
from ._slot import LIVE_STATES, Call, Slot, SlotState
from ._spill import sweep_spills
from ._stats import LaneCounters, ProcessLaneStatistics, lane_metrics, lane_statistics
from ._worker_memory import OomKillCounter, measure_workers

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Callable,
        Coroutine,
        Iterable,
        Mapping,
    )
    from concurrent.futures import Future

    from ..._config import ConcurrencySettings
    from ..._snapshot import MetricValue
    from ._cpu_budget import CpuBudget

__all__ = ("ProcessLane", "ProcessLaneStatistics")

T = TypeVar("T")
R = TypeVar("R")

_logger = logging.getLogger("resource_supervisor.broker")

_LANE: Final = "process lane"
_SETTLE_SECONDS: Final = 5.0
"""Default time NORMAL must hold before the lane grows back to full size."""
BUDGET_POLL_SECONDS: Final = 0.1
"""How often a lane sharing the container's CPU budget looks for demand or free tokens."""


# -- the lane ----------------------------------------------------------------------


class ProcessLane(LaneKills, AsyncClosable):
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

    def _prestart(self) -> None:
        """Start one worker (and the forkserver) now, so the first call finds it warm."""
        if not self._slots:
            slot = Slot()
            self._slots.append(slot)
            self._spawn(self._start_slot(slot))

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
        return {**lane_metrics(self.statistics(), backend=self.name), **self._launcher.metrics()}

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
            error = SupervisorClosedError(_LANE)
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

    # -- submission --------------------------------------------------------------------
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

    def _check_caller(self) -> asyncio.AbstractEventLoop:
        """The caller's loop, refused if the lane belongs to another loop or process."""
        if self._forked:
            raise RuntimeError(
                "this process lane belongs to the process that forked this one; "
                "a forked child must create its own lane or supervisor"
            )
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise RuntimeError(
                "the process lane was started on another event loop; call it only "
                "from the loop it started on (the call was not queued)"
            )
        return loop

    async def _run_chunk(self, func: Callable[..., object], args: tuple[object, ...]) -> object:
        return await self._submit(func, args, timeout=None, kill_on_cancel=False)

    async def _submit(
        self,
        func: Callable[..., object],
        args: tuple[object, ...],
        *,
        timeout: float | None,  # noqa: ASYNC109 - see run()
        kill_on_cancel: bool,
    ) -> object:
        self._check_caller()
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise SupervisorClosedError(_LANE)
        spill: str | None = None
        sent, sent_args = prepare_call(func, args, self._by_value)  # unchanged for pickle
        if estimate_call_bytes(func, args) <= OFFLOAD_BYTES:
            payload = pickle_call(sent, sent_args)  # cheaper here than a thread handoff
        else:
            payload, spill = await anyio.to_thread.run_sync(pickle_call_spilled, sent, sent_args)
        try:
            return await self._enqueue(func, payload, timeout, kill_on_cancel=kill_on_cancel)
        finally:
            discard_spill(spill)  # usually gone already: the worker removes it once read

    async def _enqueue(
        self,
        func: Callable[..., object],
        payload: bytes,
        timeout: float | None,  # noqa: ASYNC109 - see run()
        *,
        kill_on_cancel: bool,
    ) -> object:
        self._check_caller()  # again: the loop may have been set while pickling
        if self._closed:
            raise SupervisorClosedError(_LANE)
        if not admits(
            level=self._level, queued=len(self._queue), queue_limit=self._settings.queue_limit
        ):
            self._counts.refused += 1
            raise OverloadedError(
                "process", len(self._queue), self._settings.queue_limit, self._level.name
            )
        loop = self._ensure_started()
        call = Call(payload, describe_callable(func), timeout, loop.create_future(), kill_on_cancel)
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._on_timeout, call)
        self._queue.append(call)
        self._dispatch()
        if self._queue:
            self._resize()
        try:
            return await call.future
        except asyncio.CancelledError:
            self._cancel(call)
            raise

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            guard_lane(self)
            self._oom.start()
            self._wakeup = asyncio.Event()
            self._spawn(self._maintain(), maintainer=True)
            self._spawn(self._sweep_spills())
        return self._loop

    async def _sweep_spills(self) -> None:
        """Remove spill files a dead service left behind (in a thread: a directory scan)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sweep_spills)

    def _spawn(self, coro: Coroutine[object, object, None], *, maintainer: bool = False) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if maintainer:
            self._maintainer = task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _logger.error("process lane task failed", exc_info=task.exception())

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

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

    def _serve(self, slot: Slot) -> bool:
        """Submit the worker's serving loop; False if the slot died instead."""
        assert slot.executor is not None
        try:
            future = slot.executor.submit(_worker.serve)
        except RuntimeError:  # BrokenProcessPool (a RuntimeError) or shut down
            self._slot_died(slot)
            return False
        slot.serving = future
        future.add_done_callback(lambda f: self._serve_done_threadsafe(slot, f))
        return True

    def _serve_done_threadsafe(
        self, slot: Slot, future: Future[tuple[int, BigOutcome] | None]
    ) -> None:
        # Runs in the executor's manager thread: load a big outcome here, off the loop.
        broken = future.cancelled() or future.exception() is not None
        result = None if broken else future.result()
        decoded = None if result is None else (result[0], *load_outcome(result[1]))
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._on_serve_done, slot, future, broken, decoded)

    def _on_serve_done(
        self,
        slot: Slot,
        future: Future[tuple[int, BigOutcome] | None],
        broken: bool,  # noqa: FBT001
        decoded: tuple[int, Outcome, float, object] | None,
    ) -> None:
        if self._closed or slot.state in (SlotState.DEAD, SlotState.RETIRING):
            return
        if slot.serving is future:
            slot.serving = None  # the next batch submits the serving loop again
        self._drain(slot)
        if broken:
            self._slot_died(slot)
            return
        if decoded is not None:
            self._deliver(slot, decoded)
            # the batch stopped at the big outcome: the calls after it never started
            not_started = list(slot.in_flight)
            slot.in_flight.clear()
            self._requeue(not_started)
        elif slot.in_flight and slot.serving is None and slot.state is SlotState.BUSY:
            self._serve(slot)  # it went idle as a batch came: the batch waits in the pipe
            return
        self._after_progress(slot)

    # -- results -----------------------------------------------------------------------
    def _on_readable(self, slot: Slot) -> None:
        if self._closed:
            self._stop_reading(slot)
            return
        if self._drain(slot):
            self._after_progress(slot)
        else:
            self._slot_died(slot)

    def _drain(self, slot: Slot) -> bool:
        """Deliver every complete frame on the slot's pipe; False at end of file."""
        outcomes, alive = slot.read_outcomes()
        for outcome in outcomes:
            self._deliver(slot, outcome)
        return alive

    def _deliver(self, slot: Slot, outcome: tuple[int, Outcome, float, object]) -> None:
        seq, status, seconds, value = outcome
        while slot.in_flight and slot.in_flight[0].seq < seq:
            # cannot happen with in-order workers; never leave a caller waiting
            self._fail_crashed(slot.in_flight.popleft(), None, "lost by the worker")
        if not slot.in_flight or slot.in_flight[0].seq != seq:
            return
        call = slot.in_flight.popleft()
        call.slot = None
        if status is Outcome.SKIPPED:
            if not call.future.done():  # flagged by a kill that then did not happen
                self._requeue([call])
            return
        slot.calls_done += 1
        mean = self._call_seconds
        self._call_seconds = seconds if mean is None else mean + (seconds - mean) * 0.2
        if status is Outcome.OK:
            if self._finish(call, None, value):
                self._counts.completed += 1
        else:
            assert isinstance(value, BaseException)
            if self._finish(call, value):
                self._counts.failed += 1

    def _finish(self, call: Call, error: BaseException | None, value: object = None) -> bool:
        """Settle the call's future unless it is already settled; True if this did."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.future.done():
            return False
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(value)
        return True

    def _after_progress(self, slot: Slot) -> None:
        """A slot whose calls are all done becomes idle, or retires; then dispatch."""
        if slot.state is not SlotState.BUSY or slot.in_flight:
            self._dispatch()
            return
        settings = self._settings
        if recycle_due(
            calls_done=slot.calls_done,
            pid=slot.pid,
            max_tasks=settings.max_tasks_per_worker,
            max_rss_bytes=settings.worker_max_rss_bytes,
        ):
            self._counts.recycled += 1
            self._retire(slot)
        elif self._level > PressureLevel.NORMAL and self._live_count() > self._target:
            self._retire(slot)
        else:
            slot.mark_idle(self._clock())
            if self._sleep_until > slot.idle_since + settings.idle_timeout:
                self._wake()  # the maintainer must wake for this slot's idle timeout
        if self._queue:
            self._dispatch()
            if self._queue:
                self._resize()

    def _requeue(self, calls: list[Call]) -> None:
        for call in reversed(calls):
            call.slot = None
            call.seq = -1
            if not call.future.done():
                self._queue.appendleft(call)

    # -- deaths and retirement ---------------------------------------------------------
    def _slot_died(self, slot: Slot) -> None:
        """The worker is gone: deliver finished calls, fail the running one, requeue."""
        if slot.state is SlotState.DEAD:
            return
        self._drain(slot)
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
            if self._oom.rose():
                self._counts.oom_kills += 1
                slot.death_reason = "oom_kill"
        self._requeue(not_started)
        self._spawn(self._reap(slot, running))
        self._dispatch()
        self._resize()

    def _fail_crashed(
        self, call: Call, exitcode: int | None, detail: str, reason: str | None = None
    ) -> None:
        call.slot = None
        code, sig = (None, -exitcode) if exitcode is not None and exitcode < 0 else (exitcode, None)
        if self._finish(call, WorkerCrashedError(call.function, code, sig, detail, reason)):
            self._counts.failed += 1

    async def _reap(self, slot: Slot, running: Call | None) -> None:
        await self._launcher.shutdown(slot, self._loop)
        if running is not None and not running.future.done():
            process = slot.process
            exitcode = process.exitcode if process is not None else None
            detail = f"pid {slot.pid}"
            if slot.death_reason == "memory_pressure":
                detail += f", {slot.rss_bytes >> 20} MiB resident, killed at CRITICAL pressure"
            self._fail_crashed(running, exitcode, detail, slot.death_reason)
        self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self._slots.remove(slot)
        self._wake()

    def _retire(self, slot: Slot) -> None:
        slot.mark_retiring()
        self._stop_reading(slot)
        self._spawn(self._retire_slot(slot))

    async def _retire_slot(self, slot: Slot) -> None:
        await self._launcher.shutdown(slot, self._loop)
        slot.mark_dead()
        self._forget(slot)

    def _stop_reading(self, slot: Slot) -> None:
        stop_reading(self._loop, slot)

    # -- sizing ------------------------------------------------------------------------
    def _live_count(self) -> int:
        return sum(1 for s in self._slots if s.state in LIVE_STATES)

    def _resize(self) -> None:
        """Apply the sizing policy: start slots, retire idle ones."""
        if self._closed or self._loop is None:
            return
        now = self._clock()
        live = [s for s in self._slots if s.state in LIVE_STATES]
        idle = [s for s in live if s.state is SlotState.IDLE]
        starting = sum(1 for s in live if s.state is SlotState.STARTING)
        timeout = self._settings.idle_timeout
        expired = [s for s in idle if now - s.idle_since >= timeout]
        calm_for = math.inf if self._calm_since is None else now - self._calm_since
        if self._level > PressureLevel.NORMAL:
            calm_for = 0.0
        decide = functools.partial(
            target_workers,
            max_workers=self._max_workers,
            queued=len(self._queue),
            busy=len(live) - len(idle) - starting,
            starting=starting,
            live=len(live),
            idle_expired=len(expired),
            level=self._level,
            calm_for=calm_for,
            settle_seconds=self._settle_seconds,
        )
        token_room: int | None = None
        if self._budget is not None:  # the container's CPU budget (multi-process mode)
            token_room, surplus = self._hold_tokens(len(live), len(idle), starting)
            if surplus:  # another process waits: give idle workers back, to a fair share
                retire = min(len(idle), max(len(expired), surplus))
                decide = functools.partial(decide, idle_expired=retire)
        decision = decide()
        if decision.start:  # read the memory headroom only when it matters
            worker_bytes = max((s.rss_bytes for s in live), default=0)
            startable = startable_workers(
                self._headroom.available_bytes(),
                worker_bytes,
                live=len(live),
                starting=starting,
            )
            if token_room is not None:
                startable = token_room if startable is None else min(startable, token_room)
            decision = decide(startable=startable)
        self._target = decision.target
        for _ in range(decision.start):
            slot = Slot()
            self._slots.append(slot)
            self._spawn(self._start_slot(slot))
        idle.sort(key=lambda s: s.idle_since)
        for slot in idle[: decision.retire_idle]:
            self._retire(slot)

    def _hold_tokens(self, live: int, idle: int, starting: int) -> tuple[int, int]:
        """
        Hold the CPU tokens this lane wants; return (more workers allowed, tokens to
        give back to waiting processes). A retiring worker keeps its token until its
        process is gone.
        """
        assert self._budget is not None
        retiring = sum(1 for s in self._slots if s.state is SlotState.RETIRING)
        held = self._budget.hold(
            retiring
            + tokens_wanted(
                live=live,
                busy=live - idle - starting,
                starting=starting,
                queued=len(self._queue),
                max_workers=self._max_workers,
            )
        )
        return max(0, held - live - retiring), self._budget.surplus() if idle else 0

    def _next_deadline(self) -> float:
        """Seconds until the sizing may change by itself (an idle timeout or settling)."""
        now = self._clock()
        delays = [
            s.idle_since + self._settings.idle_timeout - now
            for s in self._slots
            if s.state is SlotState.IDLE
        ]
        if self._budget is not None and (delays or self._queue):
            delays.append(BUDGET_POLL_SECONDS)  # peers' demand, or a token coming free
        if self._calm_since is not None and now - self._calm_since < self._settle_seconds:
            delays.append(self._calm_since + self._settle_seconds - now)
        return max(0.0, min(delays, default=math.inf))

    async def _maintain(self) -> None:
        assert self._wakeup is not None
        while not self._closed:
            self._wakeup.clear()
            self._resize()
            self._dispatch()
            delay = min(self._next_deadline(), 3600.0)
            self._sleep_until = self._clock() + delay
            with anyio.move_on_after(delay):
                await self._wakeup.wait()
            self._sleep_until = -math.inf

    # -- starting slots ----------------------------------------------------------------
    async def _start_slot(self, slot: Slot) -> None:
        try:
            opened = await self._launcher.open()  # shielded: a started worker is never lost
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
        slot.adopt(opened)
        slot.rss_bytes = rss_bytes(slot.pid)  # what the next worker is judged by
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
