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

import contextlib
import contextvars
import functools
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Literal, Protocol

import anyio
from anyio.lowlevel import RunVar

from ._admission._cpu_stat import CpuStatReader
from ._admission._settings import limiter_from_settings
from ._cleanup import CleanupDispatcher, CleanupReport, CleanupRequest
from ._config import SupervisorSettings
from ._container import Container
from ._events import CleanupCompleted, CpuWarning, LevelChanged, SupervisorEvent
from ._exceptions import NoSupervisorError, SupervisorClosedError
from ._gpu import TorchGpuReclaimer, gpu_readings
from ._lifecycle import AsyncClosable
from ._main_guard import refuse_in_worker_bootstrap
from ._memory import MemoryAdvisor
from ._participants import absorb, must_propagate
from ._policy import Reading, Thresholds, cleanup_due, grade
from ._sampler import Sampler
from ._sessions import SessionRegistry
from ._snapshot import MetricsSnapshot, MetricValue, PressureLevel
from ._sources._arming import next_sample_at
from ._sources._cpus import usable_cpu_count
from ._sources._gpu import GpuSource
from ._sources._notify import MemoryNotifier
from ._streams import Broadcaster, Subscription
from ._thread_limiter import DefaultThreadLimiter
from .broker._executors import Executors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from anyio.abc import TaskGroup

    from ._admission._limiter import AdmissionLimiter
    from ._cleanup import CleanupHandler
    from ._peers import Peer

__all__ = ("MetricSource", "Supervisor")

logger = logging.getLogger("resource_supervisor")


class MetricSource(Protocol):
    """
    What a supervisor samples: the built-in sampler, or a test double such as
    :class:`resource_supervisor.testing.ScriptedSource` that wraps it.
    """

    def open(self) -> None:
        """Open files or handles; idempotent."""

    def close(self) -> None:
        """Release them; idempotent."""

    def register_provider(
        self,
        name: str,
        provider: Callable[[], Mapping[str, float | int] | Awaitable[Mapping[str, float | int]]],
    ) -> None:
        """Add a named metrics provider."""

    def unregister_provider(self, name: str) -> None:
        """Remove a provider."""

    async def sample(self) -> dict[str, MetricValue]:
        """
        Read every metric.

        Cancellation:
            A cancelled sample publishes nothing; the implementation decides what
            its providers see (the built-in sampler cancels async providers and
            abandons sync ones in their threads).
        """
        ...

    def read_memory(self) -> tuple[int, int]:
        """Working-set bytes and effective limit bytes, cheaply."""
        ...


_CURRENT: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar(
    "resource_supervisor_current", default=None
)
# Supervisors running on this event loop, innermost last: found by current() from
# tasks that did not inherit the entering task's context (e.g. ASGI request tasks
# when the supervisor was entered in the lifespan task).
_RUNNING: RunVar[list[Supervisor]] = RunVar("resource_supervisor_running")


def _running_on_this_loop() -> list[Supervisor]:
    try:
        return _RUNNING.get()
    except LookupError:
        stack: list[Supervisor] = []
        _RUNNING.set(stack)
        return stack


def resolve_io_workers(value: int | Literal["auto"], cpus: int) -> int:
    """
    Resolve ``default_io_workers``: ``auto`` follows CPython's thread-pool default,
    ``min(32, cpus + 4)``: I/O waits rather than computes, so a few threads beyond
    the CPU count keep the CPUs busy while bounding memory for thread stacks.
    """
    return min(32, cpus + 4) if value == "auto" else value


class Supervisor(AsyncClosable):
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
        self._admission = limiter_from_settings(s.admission, cpu_stat=CpuStatReader(), clock=clock)
        self._container = Container(s.multiprocess)
        self._usable_cpus = 1
        self._provider_names: list[str] = []
        self._metrics: MetricsSnapshot | None = None
        self._levels: Mapping[str, PressureLevel] = {}
        self._level = PressureLevel.NORMAL
        self._last_cleanup_at: float | None = None
        self._cpu_streak = False
        self._sample_failures = 0
        self._streams_refused = 0
        self._exit_callbacks: list[Callable[[], None]] = []
        self._cleanup_runs = 0
        self._lock = anyio.Lock()
        self._task_group: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._token: contextvars.Token[Supervisor | None] | None = None
        self._state: Literal["new", "running", "closed"] = "new"
        # Kernel memory notifications wake the sampling loop early (see _start_notifier).
        self._notifier: MemoryNotifier | None = None
        self._sample_wanted: anyio.Event | None = None
        self._last_sample_at: float | None = None
        self._notified_samples = 0

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
            self._cleanup.register(TorchGpuReclaimer(gpu), name="gpu")

        self._task_group = anyio.create_task_group()
        await stack.enter_async_context(self._task_group)
        stack.callback(self._task_group.cancel_scope.cancel)  # runs before the group exits

        running = _running_on_this_loop()
        running.append(self)
        stack.callback(running.remove, self)
        self._token = _CURRENT.set(self)

        self._start_notifier(stack)
        await self.update_metrics()
        if s.monitoring_enabled:
            self._task_group.start_soon(self._sample_loop, name="resource_supervisor.sampler")

    # -- memory notifications --------------------------------------------------
    def _start_notifier(self, stack: contextlib.AsyncExitStack) -> None:
        # Only the built-in sampler reads the kernel figures a notification is about.
        s = self._settings
        source = self._source
        if not (s.memory_notifications and s.monitoring_enabled and isinstance(source, Sampler)):
            return
        proc_root, cgroup_root, pid = source.target
        notifier = MemoryNotifier(
            self._request_sample,
            levels_percent=(s.warning_threshold_memory, s.aggressive_threshold_memory),
            proc_root=proc_root,
            cgroup_root=cgroup_root,
            pid=pid,
        )
        try:
            notifier.start()
        except (RuntimeError, NotImplementedError) as exc:  # not asyncio, or no add_reader
            logger.debug("memory notifications unavailable on this loop (%s): polling", exc)
            return
        stack.callback(notifier.close)
        self._notifier = notifier
        self._sample_wanted = anyio.Event()

    def _request_sample(self, source: str) -> None:
        wanted = self._sample_wanted
        if wanted is not None:
            wanted.set()

    async def _wait_for_sample(self, deadline: float) -> bool:
        """Sleep until *deadline* or a notification (rate-limited); True when notified."""
        if self._sample_wanted is None:
            await anyio.sleep_until(deadline)
            return False
        with anyio.CancelScope(deadline=deadline):
            await self._sample_wanted.wait()
            self._sample_wanted = anyio.Event()  # before sampling: later ones wake again
            now = anyio.current_time()
            earliest = next_sample_at(self._last_sample_at, now)
            if earliest > now:  # rate-limited; otherwise sample in this same step
                await anyio.sleep_until(earliest)
            self._notified_samples += 1
            return True
        return False

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
        return self._level

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

    # -- registration ----------------------------------------------------------
    def peers(self) -> list[Peer]:
        """
        The live supervised processes of this container with their latest snapshots,
        this one included (multi-process mode, see ``multiprocess`` settings); empty
        when the mode is off. Reads the shared directory: cheap, but not free.
        """
        return self._container.peers()

    def register_cleanup(
        self, handler: CleanupHandler, *, name: str | None = None, timeout: float | None = None
    ) -> Callable[[], None]:
        """
        Register a cleanup handler: an object with ``async def cleanup(self, request)``
        or an async callable taking a :class:`CleanupRequest`.

        Args:
            handler: The handler.
            name: Its name in reports (defaults to the object's or function's name).
            timeout: Its own timeout (defaults to ``cleanup_handler_timeout``).

        Returns:
            A function that unregisters the handler.

        Raises:
            TypeError: If *handler* is neither form.
            ValueError: If the name is taken.
        """
        return self._cleanup.register(handler, name=name, timeout=timeout)

    def register_metrics_provider(
        self,
        name: str,
        provider: Callable[[], Mapping[str, float | int] | Awaitable[Mapping[str, float | int]]],
    ) -> None:
        """
        Register a sync or async provider whose metrics appear as ``<name>_<key>``.

        A provider that raises or exceeds ``provider_timeout`` is skipped for that
        sample, counted in ``provider_failures_total`` and logged once per streak.
        Of each result, metrics that are not finite numbers with a valid name, and
        those beyond 256 per provider, are left out and counted in
        ``provider_metrics_dropped_total``.

        Args:
            name: A lower-case identifier.
            provider: ``() -> Mapping[str, float | int]``, sync (run in a thread) or async.

        Raises:
            ValueError: If the name is invalid, taken, or a built-in namespace
                (``cleanup``, ``memory``, ``process``...), whose metrics it could shadow.
        """
        self._source.register_provider(name, provider)
        self._provider_names.append(name)

    def unregister_metrics_provider(self, name: str) -> None:
        """
        Remove a provider registered with :meth:`register_metrics_provider`.

        Args:
            name: The provider's name.
        """
        self._source.unregister_provider(name)
        self._provider_names.remove(name)

    @property
    def provider_names(self) -> tuple[str, ...]:
        """Names of the registered metrics providers, in registration order."""
        return tuple(self._provider_names)

    # -- streams ---------------------------------------------------------------
    def subscribe(
        self, buffer: int | None = None, policy: Literal["drop_oldest", "latest"] = "drop_oldest"
    ) -> Subscription[MetricsSnapshot]:
        """
        Subscribe to snapshots; use as ``async with sup.subscribe() as stream``.

        Args:
            buffer: Snapshots kept for a slow reader (default ``stream_buffer``);
                when full the oldest is dropped and counted.
            policy: ``"latest"`` keeps only the newest snapshot.

        Returns:
            A subscription: an async iterator that ends when the supervisor exits.
        """
        return self._snapshots.subscribe(
            buffer=buffer if buffer is not None else self._settings.stream_buffer, policy=policy
        )

    def subscribe_events(self, buffer: int = 64) -> Subscription[SupervisorEvent]:
        """
        Subscribe to events: level changes, CPU warnings and cleanup reports.

        Args:
            buffer: Events kept for a slow reader; the oldest is dropped when full.

        Returns:
            A subscription, like :meth:`subscribe`.
        """
        return self._events.subscribe(buffer=buffer)

    def _count_refused_stream(self) -> None:
        """Count an event stream an integration refused over its cap (next snapshot)."""
        self._streams_refused += 1

    # -- sampling --------------------------------------------------------------
    async def _sample_loop(self) -> None:
        interval = self._settings.monitoring_interval
        next_at = anyio.current_time() + interval
        while True:
            notified = await self._wait_for_sample(next_at)
            # A timer that fired just as the supervisor began closing: anyio delivers
            # the task group's cancellation to an already-woken task one loop
            # iteration late, so stop here rather than sample a closed supervisor.
            if self._state != "running":
                return
            if not notified:
                next_at = max(next_at + interval, anyio.current_time())
            try:
                await self.update_metrics()
            except SupervisorClosedError:
                return
            except BaseException as exc:
                # A failing part (a custom source may raise anything) never stops the
                # loop; the next sample tries again. Real cancellation propagates.
                if must_propagate(exc):
                    raise
                absorb(exc)
                self._sample_failures += 1
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
        if self._state != "running":
            raise SupervisorClosedError
        async with self._lock:
            self._last_sample_at = anyio.current_time()
            raw = await self._source.sample()
            if self._notifier is not None:
                self._notifier.update(
                    str(raw["memory_limit_source"]), int(raw["memory_limit_bytes"])
                )
                raw.update(
                    self._notifier.metrics(), memory_notified_samples_total=self._notified_samples
                )
            if self._gpu is not None:
                # NVML calls cost microseconds to milliseconds per device: off the loop
                raw.update(await anyio.to_thread.run_sync(self._gpu.read))
            snapshot = self._build(raw)
        self._publish(snapshot)
        closing = self._sessions.expire()
        if closing is not None and self._task_group is not None:
            self._task_group.start_soon(closing, name="resource_supervisor.session_expiry")
        return snapshot

    def _build(self, raw: dict[str, MetricValue]) -> MetricsSnapshot:
        s = self._settings
        data: dict[str, MetricValue] = dict(raw)
        data.setdefault("gpu_count", 0)
        if self._executors is not None:
            data.update(self._executors.metrics())
        data.update(self._thread_limiter.metrics())
        cleanup = self._cleanup.statistics()
        snapshots = self._snapshots.statistics()
        sessions = self._sessions.statistics()
        data.update(
            active_sessions_rag=self._sessions.active,
            sessions_evicted_total=sessions.evicted_total,
            sessions_close_failures_total=sessions.close_failures,
            stream_subscribers=snapshots.subscribers,
            stream_dropped_total=snapshots.dropped + self._events.statistics().dropped,
            stream_refused_total=self._streams_refused,
            cleanup_runs_total=cleanup.runs,
            cleanup_handler_failures_total=cleanup.handler_failures,
            cleanup_handler_timeouts_total=cleanup.handler_timeouts,
            sample_failures_total=self._sample_failures,
        )
        readings = [
            Reading(
                "memory",
                float(data["memory_percent"]),
                Thresholds(s.warning_threshold_memory, s.aggressive_threshold_memory, s.hysteresis),
            )
        ]
        if s.psi_warning_some_avg10 is not None and "psi_memory_some_avg10" in data:
            readings.append(
                Reading(
                    "psi",
                    float(data["psi_memory_some_avg10"]),
                    Thresholds(s.psi_warning_some_avg10, None, s.hysteresis),
                )
            )
        if s.psi_critical_full_avg10 is not None and "psi_memory_full_avg10" in data:
            readings.append(
                Reading(
                    "psi_full",
                    float(data["psi_memory_full_avg10"]),
                    Thresholds(None, s.psi_critical_full_avg10, s.hysteresis),
                )
            )
        readings.extend(
            gpu_readings(
                data,
                warning=s.warning_threshold_gpu_memory,
                critical=s.aggressive_threshold_gpu_memory,
                hysteresis=s.hysteresis,
            )
        )
        graded = grade(self._levels, readings)
        previous = self._level
        self._levels = graded.levels
        self._level = graded.level
        data["pressure_level"] = graded.level
        data["pressure_level_name"] = graded.level.name
        data.update(self._container.observe(data))
        self._admission.observe(data, usable_cpus=self._usable_cpus)
        data.update(self._admission.metrics())
        snapshot = MetricsSnapshot(data)
        self._metrics = snapshot
        if self._executors is not None:
            self._executors.set_pressure(graded.level)
        self._thread_limiter.set_pressure(graded.level)

        if graded.level != previous:
            trigger = graded.trigger
            log = logger.warning if graded.level > previous else logger.info
            log(
                "pressure %s -> %s (memory %.1f%% of %d bytes, source %s)",
                previous.name,
                graded.level.name,
                snapshot.memory_percent,
                snapshot.memory_limit_bytes,
                snapshot.memory_limit_source,
            )
            self._events.publish(
                LevelChanged(
                    previous,
                    graded.level,
                    snapshot,
                    trigger.resource if trigger else None,
                    trigger.device if trigger else None,
                )
            )
        self._check_cpu(snapshot)
        now = self._clock()
        kind = cleanup_due(
            previous,
            graded.level,
            now=now,
            last_cleanup_at=self._last_cleanup_at,
            cooldown=s.cleanup_cooldown,
        )
        if (
            kind is not None
            and self._task_group is not None
            and self._container.cleans(aggressive=kind == "aggressive")
        ):
            self._last_cleanup_at = now
            trigger = graded.trigger
            request = CleanupRequest(
                aggressive=kind == "aggressive",
                level=graded.level,
                reason=f"{trigger.resource if trigger else 'memory'} pressure {graded.level.name}",
                snapshot=snapshot,
                resource=trigger.resource if trigger else "memory",
                device=trigger.device if trigger else None,
            )
            self._task_group.start_soon(
                functools.partial(self._run_cleanup, request, automatic=True)
            )
        return snapshot

    def _check_cpu(self, snapshot: MetricsSnapshot) -> None:
        threshold = self._settings.warning_threshold_cpu
        cpu = snapshot.system_cpu_percent
        if not math.isnan(cpu) and cpu >= threshold:
            if not self._cpu_streak:
                self._cpu_streak = True
                logger.warning("system CPU at %.1f%% (warning threshold %g%%)", cpu, threshold)
            self._events.publish(CpuWarning(cpu, threshold, snapshot))
        elif self._cpu_streak:
            self._cpu_streak = False
            logger.info("system CPU back below %g%% (%.1f%%)", threshold, cpu)

    def _publish(self, snapshot: MetricsSnapshot) -> None:
        self._snapshots.publish(snapshot)
        self._container.publish(snapshot)

    # -- cleanup ---------------------------------------------------------------
    async def _run_cleanup(self, request: CleanupRequest, *, automatic: bool) -> CleanupReport:
        report = await self._cleanup.run(request)
        self._events.publish(CleanupCompleted(report, automatic))
        if not report.ok:
            logger.warning(
                "cleanup (%s) finished with failures: %s",
                request.reason,
                ", ".join(f"{o.name}={o.status}" for o in report.failures),
            )
        return report

    async def request_cleanup(
        self, *, aggressive: bool = False, reason: str = "manual"
    ) -> CleanupReport:
        """
        Run every cleanup handler now and return the report.

        Handlers run concurrently, each under its timeout; an error or timeout is
        recorded in the report, never raised. A request arriving while a pass of
        the same or higher severity runs joins that pass instead of stacking.

        Args:
            aggressive: Ask handlers to free as much as they can.
            reason: Free text carried in the request and the report.

        Returns:
            The :class:`CleanupReport` with each handler's outcome and bytes freed.

        Raises:
            SupervisorClosedError: Outside ``async with``.

        Cancellation:
            Cancels the handlers of this pass (when no other caller shares it) and
            propagates; handlers see the cancellation at their next await.
        """
        if self._state != "running":
            raise SupervisorClosedError
        request = CleanupRequest(
            aggressive=aggressive,
            level=self._level,
            reason=reason,
            snapshot=self._metrics,
            resource="manual",
        )
        return await self._run_cleanup(request, automatic=False)

    def __repr__(self) -> str:
        return f"<Supervisor state={self._state} level={self._level.name}>"
