"""
The adaptive admission limiter behind ``sup.admission``.

Covers: :class:`AdmissionLimiter` (``async with limiter.slot(): ...``, a bounded
wait queue (FIFO, LIFO under overload) with an optional wait bound, :class:`AdmissionRejectedError`
beyond it), the windows of latency samples it feeds to the pure algorithm
(:mod:`._limit`), the drain rate behind ``retry_after``, pressure adjustments
from each snapshot (:mod:`._pressure`, :mod:`._cpu_stat`) and
:class:`AdmissionStatistics`. Does not cover: HTTP (see
:mod:`resource_supervisor.integrations._admission_middleware`).

Everything here runs on one event loop and never blocks it: admitting or
releasing a call is a few attribute updates, and a window closes in a few
microseconds of pure arithmetic.
"""

from __future__ import annotations

import collections
import math
import time
from typing import TYPE_CHECKING, Final

import anyio
import anyio.lowlevel

from .._exceptions import AdmissionRejectedError, SupervisorClosedError
from .._snapshot import PressureLevel
from ._cpu_stat import CpuStatReader, throttled_ratio
from ._limit import (
    LimitParams,
    LimitState,
    initial_state,
    next_limit,
    tightened,
    window_done,
)
from ._pressure import NO_ADJUSTMENT, PressureAdjustment, PressureParams, adjustment_for
from ._queue_order import serve_newest, wait_bound
from ._statistics import AdmissionStatistics

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from .._snapshot import MetricValue
    from ._cpu_stat import CpuStat

__all__ = ("AdmissionLimiter", "AdmissionStatistics", "serve_newest")

_DRAIN_SMOOTHING: Final = 0.3
_MAX_RETRY_AFTER: Final = 60.0
_AUTO_WAIT_TOLERANCES: Final = 2.0
"""``queue_timeout="auto"`` waits this many times ``tolerance x reference``: the time a
burst may take to drain, and the interval after which a queue that never emptied
counts as standing (:func:`~._queue_order.wait_bound`). Do not change without a full
``benchmarks/admission.py`` run: shorter refuses bursts at 1x."""


class _Waiter:
    __slots__ = ("event", "expired", "granted", "since")

    def __init__(self, since: float) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.expired = False
        self.since = since


class _Slot:
    """One use of ``limiter.slot()``: an async context manager holding a slot."""

    __slots__ = ("_limiter", "_started")

    def __init__(self, limiter: AdmissionLimiter) -> None:
        self._limiter = limiter
        self._started: float | None = None

    async def __aenter__(self) -> None:
        self._started = await self._limiter._acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        started, self._started = self._started, None
        if started is not None:
            # A cancelled call says nothing about the service's latency.
            measured = exc is None or isinstance(exc, Exception)
            self._limiter._release(started, measured=measured)


class AdmissionLimiter:
    """
    An adaptive concurrency limit for any asyncio code.

    ``async with limiter.slot(): ...`` runs the block once fewer than
    :attr:`limit` blocks run; otherwise it waits in a queue of at most
    *queue_limit* callers, or raises :exc:`AdmissionRejectedError` at once when the
    queue is full (and after *queue_timeout* seconds of waiting). The queue is
    FIFO until its oldest caller has waited a quarter of the reference latency (or
    half the wait bound), then serves the newest caller first (adaptive LIFO, see
    :func:`serve_newest`); once it has stood for a whole wait bound, callers that
    waited over half the reference latency are refused when a slot frees
    (:func:`~._queue_order.wait_bound`). The limit follows
    the blocks' latency (see :mod:`resource_supervisor._admission._limit`) and is
    tightened by memory, CPU and process-lane pressure at each supervisor sample.

    Args:
        params: The limit algorithm's tuning.
        queue_limit: Callers that may wait for a slot (0 = never wait).
        queue_timeout: Seconds a caller may wait; ``"auto"`` = twice the
            reference (minimum) latency times the tolerance (no bound until one is
            measured); ``None`` = no bound (always FIFO, nobody refused for waiting).
        window_samples: Completed calls per update of the limit.
        pressure: Thresholds of the pressure rule.
        cpu_stat: Reader of the cgroup's CPU throttling; ``None`` = no throttling input.
        clock: Monotonic clock in seconds.

    Raises:
        ValueError: If *queue_limit* is negative, *window_samples* below 1, or
            *queue_timeout* not positive.
    """

    def __init__(
        self,
        params: LimitParams | None = None,
        *,
        queue_limit: int = 32,
        queue_timeout: float | str | None = "auto",
        window_samples: int = 10,
        pressure: PressureParams | None = None,
        cpu_stat: CpuStatReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_limit < 0:
            raise ValueError(f"queue_limit must not be negative, got {queue_limit}")
        if window_samples < 1:
            raise ValueError(f"window_samples must be at least 1, got {window_samples}")
        if (
            queue_timeout != "auto"
            and queue_timeout is not None
            and (isinstance(queue_timeout, str) or not queue_timeout > 0)
        ):
            raise ValueError(f"queue_timeout must be positive, 'auto' or None: {queue_timeout!r}")
        self._params = params if params is not None else LimitParams()
        self._pressure_params = pressure if pressure is not None else PressureParams()
        self._queue_limit = queue_limit
        self._queue_timeout = queue_timeout
        self._window_samples = window_samples
        self._cpu_stat = cpu_stat
        self._clock = clock
        self._state: LimitState = initial_state(self._params, clock())
        self._cap: float | None = None
        self._adjustment: PressureAdjustment = NO_ADJUSTMENT
        self._last_cpu_stat: CpuStat | None = None
        self._throttled_ratio = math.nan
        self._throttled_seconds = math.nan
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._standing_since = math.nan  # when the queue last became non-empty
        self._in_flight = 0
        self._admitted = 0
        self._rejected = 0
        self._timed_out = 0
        # the open window
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = 0
        self._window_started = clock()
        self._drain = math.nan
        self._closed = False

    # -- lifecycle -------------------------------------------------------------
    def open(self) -> None:
        """Open the throttling reader (if any) and take its first reading; idempotent."""
        if self._cpu_stat is not None:
            self._cpu_stat.open()
            self._last_cpu_stat = self._cpu_stat.read()
            if self._last_cpu_stat is not None:
                self._throttled_seconds = self._last_cpu_stat.throttled_seconds

    def close(self) -> None:
        """
        Stop admitting: waiting callers and later ones get
        :exc:`SupervisorClosedError`; blocks already running finish. Idempotent.
        """
        self._closed = True
        for waiter in self._waiters:
            waiter.event.set()
        if self._cpu_stat is not None:
            self._cpu_stat.close()

    # -- admission -------------------------------------------------------------
    def slot(self) -> AbstractAsyncContextManager[None]:
        """
        Hold one slot for the ``async with`` block.

        Returns:
            An async context manager; entering it may wait in the queue and may
            raise :exc:`AdmissionRejectedError` (queue full, or waited past the
            queue timeout) or :exc:`SupervisorClosedError` (the limiter closed).
            The block's duration is a latency sample unless it is cancelled.

        Cancellation:
            Entering checks for cancellation first. A caller cancelled while
            queued leaves the queue and takes no slot; one cancelled just as it
            was granted a slot hands it to the next caller. The slot is released
            when the block exits, however it exits; a cancelled block is not
            counted as a latency sample.
        """
        return _Slot(self)

    async def _acquire(self) -> float:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise SupervisorClosedError("admission")
        if not self._waiters and self._in_flight < self._admit:
            return self._grant()
        if len(self._waiters) >= self._queue_limit:
            self._rejected += 1
            raise self._rejection(timed_out=False)
        waiter = _Waiter(self._clock())
        if not self._waiters:
            self._standing_since = waiter.since
        self._waiters.append(waiter)
        try:
            with anyio.move_on_after(self._max_wait()):
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._release_slot()  # cancelled as the slot arrived: pass it on
            elif not waiter.expired:
                self._leave(waiter)
            raise
        if waiter.granted:
            return self._clock()
        if self._closed:
            raise SupervisorClosedError("admission")
        if not waiter.expired:
            self._leave(waiter)
        self._rejected += 1
        self._timed_out += 1
        raise self._rejection(timed_out=True)

    def _grant(self) -> float:
        self._in_flight += 1
        self._admitted += 1
        self._window_peak = max(self._window_peak, self._in_flight)
        return self._clock()

    def _max_wait(self) -> float:
        timeout = self._queue_timeout
        if timeout is None:
            return math.inf
        if timeout == "auto":
            reference = self._state.reference
            if math.isnan(reference):
                return math.inf
            return _AUTO_WAIT_TOLERANCES * self._params.tolerance * reference
        assert isinstance(timeout, float | int)
        return float(timeout)

    def _rejection(self, *, timed_out: bool) -> AdmissionRejectedError:
        return AdmissionRejectedError(
            limit=self._admit,
            in_flight=self._in_flight,
            queued=len(self._waiters),
            queue_limit=self._queue_limit,
            retry_after=self.retry_after(),
            timed_out=timed_out,
        )

    def _release(self, started: float, *, measured: bool) -> None:
        now = self._clock()
        if measured:
            self._window_sum += max(now - started, 1e-9)
            self._window_count += 1
            count = self._window_count
            if window_done(
                count, self._window_sum / count, self._window_samples, self._state, self._params
            ):
                self._close_window(now)
        self._release_slot()

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _leave(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        if not self._waiters:
            self._standing_since = math.nan

    def _dispatch(self) -> None:
        if not self._waiters or self._closed:
            return
        max_wait = self._max_wait()
        reference = self._state.reference
        waiters = self._waiters
        while waiters and self._in_flight < self._admit:
            now = self._clock()
            bound = wait_bound(max_wait, now - self._standing_since, reference)
            while waiters and now - waiters[0].since > bound:
                # Waited past what a standing queue allows: refuse rather than serve late.
                expired = waiters.popleft()
                expired.expired = True
                expired.event.set()
            if not waiters:
                break
            if serve_newest(now - waiters[0].since, max_wait, reference):
                waiter = waiters.pop()
            else:
                waiter = waiters.popleft()
            waiter.granted = True
            self._grant()
            waiter.event.set()
        if not waiters:
            self._standing_since = math.nan

    def _close_window(self, now: float) -> None:
        elapsed = now - self._window_started
        if elapsed > 0:
            rate = self._window_count / elapsed
            self._drain = (
                rate
                if math.isnan(self._drain)
                else (1 - _DRAIN_SMOOTHING) * self._drain + _DRAIN_SMOOTHING * rate
            )
        state = next_limit(
            self._state,
            self._window_sum / self._window_count,
            self._window_peak,
            now,
            self._params,
        )
        self._state = self._capped(state)
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = self._in_flight
        self._window_started = now

    def _capped(self, state: LimitState) -> LimitState:
        cap = self._cap
        if cap is None:
            return state
        if state.probing:
            return LimitState(
                limit=state.limit,
                short=state.short,
                long=state.long,
                minimum=state.minimum,
                probing=True,
                resume_limit=min(state.resume_limit, cap),
                probe_at=state.probe_at,
            )
        if state.limit <= cap:
            return state
        return tightened(state, cap / state.limit, self._params)

    @property
    def _admit(self) -> int:
        return self._state.admit

    # -- pressure --------------------------------------------------------------
    def observe(self, snapshot: Mapping[str, MetricValue], *, usable_cpus: int) -> None:
        """
        Apply the pressure rule to one snapshot: read the cgroup's throttling,
        combine it with the level, process CPU and the process lane's queue, and
        tighten (or hold) the limit accordingly.

        Args:
            snapshot: The sample (``pressure_level``, ``process_cpu_percent``,
                ``process_queue_depth``, ``process_workers_target`` are read when
                present).
            usable_cpus: CPUs the process may use, for the CPU percent.
        """
        if self._cpu_stat is not None:
            current = self._cpu_stat.read()
            self._throttled_ratio = throttled_ratio(self._last_cpu_stat, current)
            if current is not None:
                self._last_cpu_stat = current
                self._throttled_seconds = current.throttled_seconds
        cpu = snapshot.get("process_cpu_percent", math.nan)
        cpu_percent = float(cpu) / max(1, usable_cpus) if isinstance(cpu, int | float) else math.nan
        level = snapshot.get("pressure_level", 0)
        if type(level) is not PressureLevel:  # the supervisor's is one already
            level = PressureLevel(int(level))
        adjustment = adjustment_for(  # pressure_adjustment(), no PressureInputs built
            level,
            cpu_percent,
            self._throttled_ratio,
            int(snapshot.get("process_queue_depth", 0)),
            int(snapshot.get("process_workers_target", 0)),
            self._pressure_params,
        )
        self.adjust(adjustment)

    def adjust(self, adjustment: PressureAdjustment) -> None:
        """
        Apply one pressure adjustment: multiply the limit by its factor, and while
        it holds, keep the limit from growing until the next adjustment.

        Args:
            adjustment: From :func:`._pressure.pressure_adjustment`.
        """
        self._adjustment = adjustment
        if adjustment.factor < 1.0:  # the common case (no pressure) costs nothing
            self._state = tightened(self._state, adjustment.factor, self._params)
        if adjustment.hold:
            self._cap = self._state.resume_limit if self._state.probing else self._state.limit
        else:
            self._cap = None
        self._dispatch()  # a lifted cap may admit waiters only at the next window

    # -- reading ---------------------------------------------------------------
    @property
    def limit(self) -> int:
        """Calls admitted at once now."""
        return self._admit

    def retry_after(self) -> float:
        """
        Seconds until the calls now in flight and queued have drained at the
        measured completion rate (at least 1, at most 60; 1 before any completion).

        Returns:
            The estimate in seconds.
        """
        if math.isnan(self._drain) or self._drain <= 0:
            return 1.0
        backlog = self._in_flight + len(self._waiters) + 1
        return min(_MAX_RETRY_AFTER, max(1.0, backlog / self._drain))

    def statistics(self) -> AdmissionStatistics:
        """
        Return the current figures.

        Returns:
            A frozen :class:`AdmissionStatistics`.
        """
        state = self._state
        return AdmissionStatistics(
            limit=self._admit,
            in_flight=self._in_flight,
            queued=len(self._waiters),
            queue_limit=self._queue_limit,
            admitted_total=self._admitted,
            rejected_total=self._rejected,
            timed_out_total=self._timed_out,
            latency_short_seconds=state.short,
            latency_long_seconds=state.long,
            latency_min_seconds=state.minimum,
            drain_per_second=self._drain,
            probing=state.probing,
            pressure_reasons=self._adjustment.reasons,
        )

    def metrics(self) -> dict[str, MetricValue]:
        """
        Return the ``admission_*`` and ``cgroup_cpu_throttled_*`` snapshot metrics.

        Returns:
            Metric name to value; latencies are NaN until measured.
        """
        state = self._state
        data: dict[str, MetricValue] = {
            "admission_limit": state.admit,
            "admission_in_flight": self._in_flight,
            "admission_queued": len(self._waiters),
            "admission_queue_limit": self._queue_limit,
            "admission_admitted_total": self._admitted,
            "admission_rejected_total": self._rejected,
            "admission_latency_short_seconds": state.short,
            "admission_latency_long_seconds": state.long,
            "admission_latency_min_seconds": state.minimum,
        }
        if self._cpu_stat is not None and self._last_cpu_stat is not None:
            data["cgroup_cpu_throttled_ratio"] = (
                0.0 if math.isnan(self._throttled_ratio) else self._throttled_ratio
            )
            data["cgroup_cpu_throttled_seconds_total"] = self._throttled_seconds
        return data

    def __repr__(self) -> str:
        return (
            f"<AdmissionLimiter limit={self._admit} in_flight={self._in_flight} "
            f"queued={len(self._waiters)}>"
        )
