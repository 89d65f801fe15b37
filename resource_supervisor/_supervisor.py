"""
The Supervisor: composes sampling, pressure grading, cleanup, streams, sessions and
the executor broker, and owns their lifecycle.

Covers: :class:`Supervisor` (one per process in production; several are allowed,
the innermost is :meth:`Supervisor.current`), the sampling loop, turning a sample
into a :class:`MetricsSnapshot`, dispatching automatic cleanup, and publishing
snapshots and events. Does not cover: how each part works (see :mod:`._sampler`,
:mod:`._policy`, :mod:`._cleanup`, :mod:`._streams`, :mod:`._sessions`,
:mod:`._memory`, :mod:`.broker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Literal

import anyio

from ._admission._settings import limiter_from_settings
from ._announce import announce, cleanup_request
from ._cleanup import CleanupDispatcher, CleanupRequest
from ._config import SupervisorSettings
from ._container import Container
from ._contributions import MetricsContributor, StreamMetrics, gather
from ._decision import Decision, PolicyState, ReadingRules, decide
from ._exceptions import NoSupervisorError, SupervisorClosedError
from ._gpu import TorchGpuReclaimer
from ._lifecycle import AsyncClosable
from ._main_guard import refuse_in_worker_bootstrap
from ._memory import MemoryAdvisor
from ._metric_source import MetricSource, WithGpu
from ._participants import absorb, must_propagate
from ._pass_cpu_stat import PassCpuStatReader
from ._registration import Registrations
from ._running import _CURRENT, _RUNNING, _running_on_this_loop, resolve_io_workers
from ._sample_timer import SampleTimer
from ._sampler import Sampler
from ._sessions import SessionRegistry
from ._snapshot import MetricsSnapshot, MetricValue, PressureLevel
from ._sources._cpus import usable_cpu_count
from ._sources._gpu import GpuSource
from ._streams import Broadcaster
from ._thread_limiter import DefaultThreadLimiter
from .broker._executors import Executors

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Callable

    from anyio.abc import TaskGroup

    from ._admission._limiter import AdmissionLimiter
    from ._events import SupervisorEvent
    from ._policy import CleanupKind

__all__ = ("MetricSource", "Supervisor")

logger = logging.getLogger("resource_supervisor")


class Supervisor(Registrations, AsyncClosable):
    """
    Keeps a service inside its memory and CPU budget.

    Use as ``async with Supervisor(settings) as sup:``. On entry it takes a first
    sample (so :attr:`metrics` is never ``None`` inside), starts the sampling loop
    when ``monitoring_enabled``, and registers the built-in cleanup participants
    (memory reclaim, idle sessions, GPU caches when PyTorch is loaded). On exit it
    stops every task, thread and worker process it started.

    Args:
        settings: Settings; ``None`` uses defaults (no file, no environment).
        source: What to sample; defaults to the built-in sampler reading
            ``/proc`` and ``/sys/fs/cgroup`` (tests may pass a wrapped one).
        clock: Monotonic clock for cooldowns (tests may pass a manual one).
        gpu_visible_devices: ``CUDA_VISIBLE_DEVICES`` to honour; defaults to the
            process environment's value, read once on entry.
    """

    def __init__(
        self,
        settings: SupervisorSettings | None = None,
        *,
        source: MetricSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        gpu_visible_devices: str | None = None,
    ) -> None:
        self._settings = settings if settings is not None else SupervisorSettings()
        s = self._settings
        self._clock = clock
        self._source: MetricSource = (
            source if source is not None else Sampler(provider_timeout=s.provider_timeout)
        )
        self._gpu_visible = gpu_visible_devices
        self._gpu: GpuSource | None = None
        self._snapshots: Broadcaster[MetricsSnapshot] = Broadcaster()
        self._events: Broadcaster[SupervisorEvent] = Broadcaster()
        self._cleanup = CleanupDispatcher(
            handler_timeout=s.cleanup_handler_timeout,
            measure_used_bytes=lambda: self._source.read_memory()[0],
        )
        self._sessions = SessionRegistry(
            ttl=s.session_ttl,
            aggressive_ttl=s.session_ttl_aggressive,
            clock=clock,
            close_timeout=s.shutdown_timeout,  # callbacks run concurrently: bounds exit
        )
        self._memory = MemoryAdvisor(lambda: self.metrics)
        self._executors: Executors | None = None
        self._thread_limiter = DefaultThreadLimiter(
            tokens=s.concurrency.default_thread_limiter_tokens,
            govern=s.concurrency.govern_default_thread_limiter,
        )
        self._cpu_stat = PassCpuStatReader()  # read in the built-in sampler's pass
        self._admission = limiter_from_settings(s.admission, cpu_stat=self._cpu_stat, clock=clock)
        self._container = Container(s.multiprocess)
        self._usable_cpus = 1
        self._provider_names: list[str] = []
        self._metrics: MetricsSnapshot | None = None
        # What decide() remembers between samples (levels, cooldown, CPU streak).
        self._policy = PolicyState(
            cooldown=s.cleanup_cooldown, cpu_threshold=s.warning_threshold_cpu
        )
        self._rules = ReadingRules(s)  # the thresholds, built once
        self._auto_cleanups: dict[CleanupKind, int] = {"normal": 0, "aggressive": 0}
        self._stream_metrics = StreamMetrics(self._snapshots, self._events)
        self._contributors: list[MetricsContributor] = []
        self._timer = SampleTimer()  # when to sample next (interval, notifications)
        self._exit_callbacks: list[Callable[[], None]] = []
        self._cleanup_runs = 0
        self._lock = asyncio.Lock()  # uncontended: no checkpoint, no extra turn of the loop
        self._task_group: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._token: contextvars.Token[Supervisor | None] | None = None
        self._state: Literal["new", "running", "closed"] = "new"

    # -- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        """
        Start supervising: open sources, take the first sample, start the loop.

        Raises:
            RuntimeError: If this supervisor was already entered.

        Cancellation:
            If cancelled during entry, everything started so far is stopped
            before the cancellation propagates.
        """
        if self._state != "new":
            raise RuntimeError("a Supervisor can be entered only once; create a new one")
        refuse_in_worker_bootstrap()  # an unguarded script re-run by a worker: exit it once
        self._state = "running"
        stack = contextlib.AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._state = "closed"
            raise
        self._stack = stack
        return self

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self._settings
        base = self._source
        if isinstance(base, Sampler):
            base.read_in_pass(self._cpu_stat.refresh)
        self._source.open()
        stack.callback(self._source.close)
        cpus = usable_cpu_count()
        container_cpus = s.concurrency.container_cpu_workers
        self._container.open(cpu_tokens=cpus if container_cpus == "auto" else container_cpus)
        stack.callback(self._container.close)  # after the lanes: their tokens go last
        stack.push_async_callback(self._snapshots.aclose)
        stack.push_async_callback(self._events.aclose)
        stack.push_async_callback(self._sessions.aclose)

        self._usable_cpus = cpus
        self._admission.open()
        stack.callback(self._admission.close)
        cpu_workers = (
            cpus
            if s.concurrency.default_cpu_workers == "auto"
            else s.concurrency.default_cpu_workers
        )
        io_workers = resolve_io_workers(s.concurrency.default_io_workers, cpus)
        self._executors = Executors(
            s.concurrency,
            cpu_workers=cpu_workers,
            io_workers=io_workers,
            cpu_budget=self._container.cpu_budget,
            shutdown_timeout=s.shutdown_timeout,
        )
        await stack.enter_async_context(self._executors)
        self._thread_limiter.apply()
        stack.callback(self._thread_limiter.restore)

        self._cleanup.register(self._memory.reclaim, name="memory")
        self._cleanup.register(self._sessions.cleanup, name="sessions")
        visible = self._gpu_visible
        if visible is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu = GpuSource(visible_devices=visible)
        # nvmlInit can take long with a driver present: keep it off the loop
        if await anyio.to_thread.run_sync(gpu.open):
            self._gpu = gpu
            stack.callback(gpu.close)
            self._source = WithGpu(base, gpu)  # GPU figures come with every sample
            self._cleanup.register(TorchGpuReclaimer(gpu), name="gpu")

        self._task_group = anyio.create_task_group()
        await stack.enter_async_context(self._task_group)
        stack.callback(self._task_group.cancel_scope.cancel)  # runs before the group exits

        running = _running_on_this_loop()
        running.append(self)
        stack.callback(running.remove, self)
        self._token = _CURRENT.set(self)

        # Each part contributes its own counters to every snapshot.
        self._contributors = [
            self._executors,
            self._thread_limiter,
            self._sessions,
            self._stream_metrics,
            self._cleanup,
            self._timer,
        ]
        self._timer.start(s, base, stack, read_ahead=self._source is base)  # nothing wraps it
        await self.update_metrics()
        if s.monitoring_enabled:
            self._task_group.start_soon(self._sample_loop, name="resource_supervisor.sampler")

    async def aclose(self) -> None:
        """
        Stop everything this supervisor started.

        Idempotent; always closes, even when cancelled or when a part fails to
        close gracefully. Subscribers blocked on a stream get ``EndOfStream``
        (their ``async for`` ends); calls waiting in the executor lanes fail with
        :class:`SupervisorClosedError`.

        Cancellation:
            Shielded: the shutdown runs to completion, then a pending cancellation
            is delivered at the next checkpoint of the caller.
        """
        if self._state != "running":
            self._state = "closed"
            self._run_exit_callbacks()
            return
        self._state = "closed"
        stack, self._stack = self._stack, None
        if self._token is not None:
            with contextlib.suppress(ValueError):  # reset from another context
                _CURRENT.reset(self._token)
            self._token = None
        try:
            if stack is not None:
                # Not wrapped in a shielded scope: task groups in the stack must exit
                # in the host task's own scope order. Each part shields its own shutdown.
                await stack.aclose()
        finally:
            self._run_exit_callbacks()

    def _call_at_exit(self, callback: Callable[[], None]) -> None:
        """Run sync *callback* once when this supervisor exits (integrations' undo)."""
        self._exit_callbacks.append(callback)

    def _run_exit_callbacks(self) -> None:
        callbacks, self._exit_callbacks = self._exit_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("an exit callback of the supervisor failed")

    @classmethod
    def current(cls) -> Supervisor:
        """
        Return the running supervisor: the innermost one entered in this context,
        else the most recently entered one still running on this event loop.

        Returns:
            The running :class:`Supervisor`.

        Raises:
            NoSupervisorError: If none is running here.
        """
        sup = _CURRENT.get()
        if sup is not None and sup._state == "running":
            return sup
        try:
            running = _RUNNING.get()
        except (LookupError, RuntimeError):
            running = []
        if running:
            return running[-1]
        raise NoSupervisorError

    # -- parts -----------------------------------------------------------------
    @property
    def settings(self) -> SupervisorSettings:
        """The frozen settings in use."""
        return self._settings

    @property
    def metrics(self) -> MetricsSnapshot:
        """
        The latest snapshot (never ``None`` once entered).

        ``active_sessions_rag`` is always the count of sessions open now: a session
        opened or closed since the last sample shows at once (in a copy of that
        sample; other metrics stay as sampled).

        Raises:
            SupervisorClosedError: Before entry.
        """
        snapshot = self._metrics
        if snapshot is None:
            raise SupervisorClosedError("supervisor (no snapshot before entry)")
        active = self._sessions.active
        if snapshot.active_sessions_rag != active:
            data = dict(snapshot.items())
            data["active_sessions_rag"] = active
            snapshot = self._metrics = MetricsSnapshot(data)
        return snapshot

    @property
    def running(self) -> bool:
        """True between entry and exit (exporters stop reporting once it is False)."""
        return self._state == "running"

    @property
    def level(self) -> PressureLevel:
        """The current pressure level."""
        return self._policy.level

    @property
    def executors(self) -> Executors:
        """
        The executor broker: thread lane and process lane.

        Raises:
            SupervisorClosedError: Outside ``async with``.
        """
        if self._executors is None or self._state != "running":
            raise SupervisorClosedError("executors")
        return self._executors

    @property
    def admission(self) -> AdmissionLimiter:
        """
        The adaptive admission limiter: ``async with sup.admission.slot(): ...``.

        .. versionadded:: 0.2
        """
        return self._admission

    @property
    def memory(self) -> MemoryAdvisor:
        """Batch-size advice and the memory reclaim participant."""
        return self._memory

    @property
    def sessions(self) -> SessionRegistry:
        """Sessions, counted in ``active_sessions_rag`` and evicted when idle."""
        return self._sessions

    @property
    def gpu(self) -> GpuSource | None:
        """The GPU source when NVML found devices, else ``None``."""
        return self._gpu

    # -- sampling --------------------------------------------------------------
    async def _sample_loop(self) -> None:
        interval = self._settings.monitoring_interval
        now = self._timer.now
        next_at = now() + interval
        while True:
            wake = await self._timer.wait(next_at)
            # A timer that fired just as the supervisor began closing: anyio delivers
            # the task group's cancellation to an already-woken task one loop
            # iteration late, so stop here rather than sample a closed supervisor.
            if self._state != "running":
                return
            if not wake.notified:
                next_at = max(next_at + interval, now())
            try:
                await self._update(wake.readings)
            except SupervisorClosedError:
                return
            except BaseException as exc:
                # A failing part (a custom source may raise anything) never stops the
                # loop; the next sample tries again. Real cancellation propagates.
                if must_propagate(exc):
                    raise
                absorb(exc)
                self._timer.failures += 1
                logger.exception("sampling failed; will retry in %.3g s", interval, exc_info=exc)

    async def update_metrics(self) -> MetricsSnapshot:
        """
        Sample now, grade the pressure, publish the snapshot, start automatic
        cleanup when the level calls for it, and expire sessions idle longer than
        ``session_ttl`` (their ``on_close`` callbacks run in the background).

        Returns:
            The new snapshot (also :attr:`metrics`).

        Raises:
            SupervisorClosedError: Outside ``async with``.

        Cancellation:
            Concurrent calls are serialised. If cancelled while sampling, nothing
            is published and :attr:`metrics` keeps the previous snapshot; providers
            still running are cancelled (sync ones are abandoned in their thread).
        """
        return await self._update(None)

    async def _update(self, readings: dict[str, MetricValue] | None) -> MetricsSnapshot:
        """:meth:`update_metrics`, with the built-in sampler's *readings* when read ahead."""
        if self._state != "running":
            raise SupervisorClosedError
        async with self._lock:
            self._timer.sampling()
            source = self._source
            if readings is not None and isinstance(source, Sampler):
                raw = await source.sample(readings=readings)
            else:
                raw = await source.sample()
            self._timer.sampled(raw)
            snapshot = self._build(raw)
        self._publish(snapshot)
        closing = self._sessions.expire()
        if closing is not None and self._task_group is not None:
            self._task_group.start_soon(closing, name="resource_supervisor.session_expiry")
        return snapshot

    def _build(self, raw: dict[str, MetricValue]) -> MetricsSnapshot:
        """Gather every part's metrics, decide (pure), build the snapshot, act."""
        data: dict[str, MetricValue] = dict(raw)
        data.setdefault("gpu_count", 0)
        gather(data, self._contributors)
        running = self._auto_cleanups
        readings = self._rules.readings(
            data,
            cleanup_running=(
                "aggressive" if running["aggressive"] else "normal" if running["normal"] else None
            ),
        )
        decision = decide(self._policy, readings, self._clock())
        data["pressure_level"] = decision.level
        data["pressure_level_name"] = decision.level.name
        data.update(self._container.observe(data))
        self._admission.observe(data, usable_cpus=self._usable_cpus)
        data.update(self._admission.metrics())
        snapshot = MetricsSnapshot(data)
        self._metrics = snapshot
        self._act(decision, snapshot)
        return snapshot

    def _act(self, decision: Decision, snapshot: MetricsSnapshot) -> None:
        """Carry out *decision*: pressure to the lanes, log and publish (:func:`announce`),
        start cleanup."""
        self._policy = decision.state
        level = decision.level
        if self._executors is not None:
            self._executors.set_pressure(level)
        self._thread_limiter.set_pressure(level)
        announce(decision, snapshot, self._events)
        plan = decision.cleanup
        if plan is None:
            return
        if self._task_group is None or not self._container.cleans(aggressive=plan.aggressive):
            self._policy = decision.cleanup_not_started()
            return
        request = cleanup_request(plan, snapshot)
        kind: CleanupKind = "aggressive" if plan.aggressive else "normal"
        self._auto_cleanups[kind] += 1
        self._task_group.start_soon(functools.partial(self._run_automatic, request, kind))

    async def _run_automatic(self, request: CleanupRequest, kind: CleanupKind) -> None:
        try:
            await self._run_cleanup(request, automatic=True)
        finally:
            self._auto_cleanups[kind] -= 1

    def _publish(self, snapshot: MetricsSnapshot) -> None:
        self._snapshots.publish(snapshot)
        self._container.publish(snapshot)

    def __repr__(self) -> str:
        return f"<Supervisor state={self._state} level={self._policy.level.name}>"
