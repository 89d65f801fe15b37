"""
The sampler: one call reads every source and provider into a flat metrics dict.

Covers: :class:`Sampler`, which keeps the ``/proc``, cgroup and PSI files open
(:mod:`._sources`), turns their figures into the core metrics (effective memory,
CPU percentages since the previous sample, process RSS, threads and fds), and runs
the registered metrics providers concurrently, each under a timeout, namespacing
their keys ``<provider>_<key>``; and :class:`SamplerStatistics`.

Does not cover: when to sample (the interval loop lives in :mod:`._supervisor`),
grading pressure (:mod:`._policy`), building the immutable snapshot
(:mod:`._snapshot`; the supervisor adds ``pressure_level``, ``active_sessions_rag``
and the broker and stream counters), or publishing it (:mod:`._streams`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import psutil

from ._participants import absorb, describe, must_propagate
from ._provider_call import MetricsProvider, Provider, call_provider
from ._provider_output import MAX_PROVIDER_METRICS, check_provider_name, validate_output
from ._sources._cgroup import CgroupMemoryReader, MemoryFigures, effective_memory
from ._sources._kept_open import KeptOpen
from ._sources._proc import CpuTimes, HostMemory, ProcReader
from ._sources._psi import PsiReader
from ._sources._read_thread import ReadThread, ScheduledRead

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._snapshot import MetricValue

__all__ = ("MetricsProvider", "Sampler", "SamplerStatistics")

logger: Final = logging.getLogger("resource_supervisor.sampler")


# Shortest window over which CPU percentages are computed: /proc counters tick every
# 10 ms, so a shorter window is mostly quantisation noise.
_MIN_CPU_WINDOW_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class SamplerStatistics:
    """Counters of a :class:`Sampler`."""

    samples: int
    """Samples completed."""
    provider_failures: int
    """Provider calls that raised, timed out or returned something other than a mapping."""
    sample_seconds_last: float
    """Duration of the last completed sample, providers included."""
    metrics_dropped: int = 0
    """Provider metrics left out: not finite numbers, bad names, or beyond the
    per-provider budget (see :mod:`._provider_output`)."""


class Sampler(KeptOpen):
    """
    Read every metric source and provider into one flat dict per call.

    Sources are files kept open between samples (``/proc``, cgroup v1/v2, PSI) and
    read with ``os.pread`` in the sampler's own thread (:mod:`._sources._read_thread`)
    while the event loop waits, so the loop's cost of a sample without providers is
    the hand-over, not the reads. A source that cannot be read degrades to host
    figures or leaves its keys out; a sample never raises because of one.

    The sampler is used from one event loop; it is not thread-safe.
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pid: int | None = None,
        provider_timeout: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Prepare a sampler; no file is opened until :meth:`open`.

        Args:
            proc_root: Where procfs is mounted (a directory laid out like it in tests).
            cgroup_root: Where the cgroup hierarchies are mounted.
            pid: The process to measure; ``None`` means this process.
            provider_timeout: Seconds each provider may take per sample.
            wall_clock: Source of ``last_metrics_update_ts``.
            clock: Monotonic clock timing the CPU percentages (at least 0.1 s
                apart; a sample sooner repeats the previous figures).

        Raises:
            ValueError: If *provider_timeout* is not positive.
        """
        if not provider_timeout > 0:
            raise ValueError(f"provider_timeout must be positive, got {provider_timeout!r}")
        self._target = (proc_root, cgroup_root, pid)
        self._proc = ProcReader(proc_root=proc_root, pid=pid)
        self._cgroup = CgroupMemoryReader(proc_root=proc_root, cgroup_root=cgroup_root, pid=pid)
        self._psi = PsiReader(proc_root=proc_root, cgroup_root=cgroup_root, pid=pid)
        self._provider_timeout = provider_timeout
        self._wall_clock = wall_clock
        self._clock = clock
        self._providers: dict[str, Provider] = {}
        self._in_pass: list[Callable[[], None]] = []
        self._opened = False
        self._last_cpu: CpuTimes | None = None
        self._last_process_ticks: int | None = None
        self._last_process_time = 0.0
        self._last_cpu_time = 0.0
        self._system_cpu_last = 0.0
        self._process_cpu_last = 0.0
        self._samples = 0
        self._provider_failures = 0
        self._metrics_dropped = 0
        self._sample_seconds_last = 0.0
        # The read pass runs in this thread; its lock keeps read_memory() and close()
        # from overlapping a pass (a closed descriptor's number could be reused).
        self._reader = ReadThread()

    @property
    def target(self) -> tuple[str, str, int | None]:
        """``(proc_root, cgroup_root, pid)`` as given: where memory notifications arm."""
        return self._target

    # -- lifecycle -----------------------------------------------------------------
    def open(self) -> None:
        """
        Open the kept-open files and take the CPU baselines; idempotent. Synchronous
        and cheap (a few ``open`` calls). Sources that cannot be opened are skipped.
        """
        if self._opened:
            return
        self._proc.open()
        self._cgroup.open()
        self._psi.open()
        self._opened = True
        self._last_cpu = self._read_cpu_times()
        self._last_process_ticks = self._read_process_ticks()
        self._last_process_time = self._last_cpu_time = self._clock()
        self._reader.start()

    def close(self) -> None:
        """Close every kept-open file; idempotent. :meth:`open` may be called again."""
        self._opened = False
        self._reader.stop()
        with self._reader.lock:
            self._proc.close()
            self._cgroup.close()
            self._psi.close()

    # -- providers -----------------------------------------------------------------
    def register_provider(self, name: str, provider: MetricsProvider) -> None:
        """
        Add a metrics provider; its keys appear as ``<name>_<key>`` from the next sample.

        Args:
            name: Lower-case identifier (``[a-z][a-z0-9_]*``), unique in this sampler,
                whose first word is no built-in namespace (``cleanup``, ``memory``,
                ``process``, ``gpu0``...: see :mod:`._provider_output`).
            provider: A sync or async callable returning a mapping of metric name
                (letters, digits, ``_``) to a finite int or float. Sync providers run
                in a daemon worker thread, so a slow one cannot block the event loop
                nor, hung, keep the interpreter alive. Of each result, metrics that
                are not finite numbers with a valid name, and those beyond the first
                256, are left out and counted in ``provider_metrics_dropped_total``.

        Raises:
            ValueError: If *name* is malformed, a built-in namespace or already
                registered.
            TypeError: If *provider* is not callable.
        """
        check_provider_name(name)
        if name in self._providers:
            raise ValueError(f"a provider named {name!r} is already registered")
        if not callable(provider):
            raise TypeError(f"provider {name!r} must be callable, got {provider!r}")
        self._providers[name] = Provider(name, provider)

    def unregister_provider(self, name: str) -> None:
        """
        Remove a provider; a sample already running still uses it.

        Args:
            name: The name it was registered under.

        Raises:
            KeyError: If no provider has that name.
        """
        try:
            del self._providers[name]
        except KeyError:
            raise KeyError(f"no provider named {name!r} is registered") from None

    def read_in_pass(self, read: Callable[[], None]) -> None:
        """
        Also call *read* in every read pass, after the sampler's own reads: in the
        sampler's thread, with the pass's lock held, so another part's kernel file is
        read with the others instead of on the loop. What it raises is logged at
        debug and dropped; the sample goes on.

        Args:
            read: A cheap, blocking, thread-safe callable.
        """
        if read not in self._in_pass:
            self._in_pass.append(read)

    # -- reading -------------------------------------------------------------------
    def statistics(self) -> SamplerStatistics:
        """Return the sampler's counters."""
        return SamplerStatistics(
            samples=self._samples,
            provider_failures=self._provider_failures,
            sample_seconds_last=self._sample_seconds_last,
            metrics_dropped=self._metrics_dropped,
        )

    def read_memory(self) -> tuple[int, int]:
        """
        Read the effective memory now: a few preads, cheap enough for the event loop.

        Returns:
            ``(working-set used bytes, effective limit bytes)``, the same figures as
            ``memory_used_bytes`` and ``memory_limit_bytes`` of :meth:`sample`.

        Raises:
            RuntimeError: If the sampler is not open.
        """
        self._check_open()
        with self._reader.lock:
            figures = self._read_memory_figures(self._read_host_memory())
        return figures.used_bytes, figures.limit_bytes

    def read_at(
        self, when: float, on_done: Callable[[tuple[bool, object]], None]
    ) -> ScheduledRead | None:
        """
        Read the files in the sampler's thread once ``time.monotonic()`` reaches
        *when*, and hand the figures to *on_done* on this loop, for :meth:`sample`'s
        *readings*: a sample on a timer then wakes the loop once, with its reads done.

        Args:
            when: A ``time.monotonic()`` time.
            on_done: Called on the loop with ``(True, readings)``, or ``(False, exc)``
                when the pass raised (the sampler was closed).

        Returns:
            The scheduled pass (:meth:`~._sources._read_thread.ScheduledRead.cancel`
            skips it), or ``None`` where the sampler's thread does not run (in a
            child made by ``os.fork()``): sample the usual way there.

        Raises:
            RuntimeError: If the sampler is not open, or no asyncio loop runs.
        """
        self._check_open()
        if not self._reader.running:
            return None
        return self._reader.schedule(self._read_core_locked, when, on_done)

    async def sample(
        self, *, readings: dict[str, MetricValue] | None = None
    ) -> dict[str, MetricValue]:
        """
        Take one sample of every source and provider.

        File sources are read first, in the sampler's thread while the loop waits
        (synchronously where no asyncio loop runs), unless *readings* holds the
        figures of a pass :meth:`read_at` already did (the dict is taken over);
        then providers run concurrently,
        each under ``provider_timeout``. A provider that raises, times
        out or returns something other than a mapping of names to numbers is left out
        of this sample and counted in ``provider_failures_total``.

        Returns:
            Metric name to value; see the module and ``DESIGN.md`` for the keys.

        Raises:
            RuntimeError: If the sampler is not open.

        Cancellation:
            Cancelled while the file reads run, the call raises the cancellation at
            once and the read pass finishes in the sampler's thread (its CPU
            baselines advance; no sample is counted); a pass that had not started
            is skipped. Cancelled while providers
            run, the call raises the cancellation, cancels async providers,
            abandons sync providers still running in worker threads (such a
            provider is not called again until its thread returns), and counts no
            sample and no failure; the CPU baselines have advanced, so the next
            sample's CPU percentages cover less time.
        """
        self._check_open()
        started = time.perf_counter()
        data = readings if readings is not None else await self._read_files()
        providers = list(self._providers.values())
        if providers:
            results: dict[str, dict[str, float | int]] = {}
            async with anyio.create_task_group() as tg:
                for provider in providers:
                    tg.start_soon(self._run_provider, provider, results)
            for provider in providers:
                result = results.get(provider.name)
                if result is not None:
                    data.update(result)
        data["provider_failures_total"] = self._provider_failures
        data["provider_metrics_dropped_total"] = self._metrics_dropped
        elapsed = time.perf_counter() - started
        data["sample_duration_seconds"] = elapsed
        self._sample_seconds_last = elapsed
        self._samples += 1
        return data

    # -- internals -----------------------------------------------------------------
    async def _read_files(self) -> dict[str, MetricValue]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: read here
            return self._read_core_locked()
        if not self._reader.running:  # in a child made by os.fork()
            return self._read_core_locked()
        return await self._reader.run(self._read_core_locked)

    def _read_core_locked(self) -> dict[str, MetricValue]:
        with self._reader.lock:
            if not self._opened:  # closed while the pass was queued
                raise RuntimeError("the sampler is not open; call open() first")
            return self._read_core()

    def _check_open(self) -> None:
        if not self._opened:
            raise RuntimeError("the sampler is not open; call open() first")

    def _read_host_memory(self) -> HostMemory:
        try:
            return self._proc.read_host_memory()
        except (OSError, ValueError):
            pass
        try:
            vm = psutil.virtual_memory()
        except (OSError, psutil.Error):
            return HostMemory(total_bytes=0, available_bytes=0)
        return HostMemory(total_bytes=vm.total, available_bytes=vm.available)

    def _read_memory_figures(self, host: HostMemory) -> MemoryFigures:
        # Usage and memory.stat cost a third of a sample and matter only when a
        # limit below host memory applies, so the limits are read first.
        try:
            limit = self._cgroup.read_limit()
            if limit is None or limit > host.total_bytes:
                return effective_memory(host, None)
            cgroup = self._cgroup.read(limit=limit)
        except (OSError, ValueError) as exc:
            logger.debug("memory cgroup unreadable, using host figures: %s", exc)
            cgroup = None
        return effective_memory(host, cgroup)

    def _read_cpu_times(self) -> CpuTimes | None:
        try:
            return self._proc.read_cpu_times()
        except (OSError, ValueError, psutil.Error):
            return None

    def _read_process_ticks(self) -> int | None:
        try:
            return self._proc.read_process_stat().cpu_ticks
        except (OSError, ValueError):
            return None

    def _read_core(self) -> dict[str, MetricValue]:
        data: dict[str, MetricValue] = {"last_metrics_update_ts": self._wall_clock()}
        host = self._read_host_memory()
        figures = self._read_memory_figures(host)
        data["system_memory_percent"] = host.percent
        data["host_memory_total_bytes"] = host.total_bytes
        data["memory_used_bytes"] = figures.used_bytes
        data["memory_limit_bytes"] = figures.limit_bytes
        data["memory_percent"] = figures.percent
        data["memory_limit_source"] = figures.source
        if figures.cgroup_limit_bytes is not None:
            data["cgroup_memory_limit_bytes"] = figures.cgroup_limit_bytes

        # CPU counters tick in jiffies (10 ms): over a shorter window one tick reads
        # as 0 or 100 %. Within the window, repeat the last figure and keep the
        # baseline, so the first sample right after open() is not a spurious 100 %.
        now = self._clock()
        cpu = self._read_cpu_times()
        system_cpu = self._system_cpu_last
        if cpu is not None and now - self._last_cpu_time >= _MIN_CPU_WINDOW_SECONDS:
            if self._last_cpu is not None:
                total = cpu.total - self._last_cpu.total
                system_cpu = 0.0
                if total > 0:
                    busy = cpu.busy - self._last_cpu.busy
                    system_cpu = min(100.0, max(0.0, busy / total * 100))
            self._last_cpu = cpu
            self._last_cpu_time = now
            self._system_cpu_last = system_cpu
        data["system_cpu_percent"] = system_cpu

        threads = 0
        process_cpu = self._process_cpu_last
        try:
            stat = self._proc.read_process_stat()
        except (OSError, ValueError):
            pass
        else:
            threads = stat.threads
            elapsed = now - self._last_process_time
            if elapsed >= _MIN_CPU_WINDOW_SECONDS:
                if self._last_process_ticks is not None:
                    used = (stat.cpu_ticks - self._last_process_ticks) / self._proc.clock_ticks
                    process_cpu = max(0.0, used / elapsed * 100)
                self._last_process_ticks = stat.cpu_ticks
                self._last_process_time = now
                self._process_cpu_last = process_cpu
        data["process_cpu_percent"] = process_cpu
        data["process_threads"] = threads
        try:
            data["process_rss_bytes"] = self._proc.read_rss_bytes()
        except (OSError, ValueError):
            data["process_rss_bytes"] = 0
        try:
            data["process_fds"] = self._proc.read_fd_count()
        except OSError:
            data["process_fds"] = 0

        try:
            psi = self._psi.read()
        except (OSError, ValueError):
            psi = None
        if psi is not None:
            data["psi_memory_some_avg10"] = psi.some_avg10
            if psi.full_avg10 is not None:
                data["psi_memory_full_avg10"] = psi.full_avg10
        for read in self._in_pass:
            try:
                read()
            except Exception as exc:  # noqa: BLE001 - another part's read; the sample goes on
                logger.debug("a read in the sampler's pass failed: %r", exc)
        return data

    async def _run_provider(
        self, provider: Provider, results: dict[str, dict[str, float | int]]
    ) -> None:
        try:
            raw = await call_provider(provider, self._provider_timeout)
            metrics, dropped = validate_output(provider.name, raw)
        except TimeoutError:
            self._provider_failed(provider, f"timed out after {self._provider_timeout} s", None)
        except BaseException as exc:
            # Whatever a provider raises (KeyboardInterrupt, SystemExit, its own
            # CancelledError) is its failure, never the sampler's; only a real
            # cancellation of this sample propagates (see _participants).
            if must_propagate(exc, in_thread=not provider.is_async):
                raise
            absorb(exc)
            self._provider_failed(provider, describe(exc), exc)
        else:
            results[provider.name] = metrics
            self._note_dropped(provider, dropped)
            if provider.failed_samples:
                logger.info(
                    "metrics provider %r recovered after %d failed samples",
                    provider.name,
                    provider.failed_samples,
                )
                provider.failed_samples = 0

    def _note_dropped(self, provider: Provider, dropped: int) -> None:
        """Count the metrics of a result left out; warn when a provider starts dropping."""
        self._metrics_dropped += dropped
        if dropped and not provider.dropping:
            logger.warning(
                "metrics provider %r returned %d unusable metrics (not finite numbers, "
                "bad names, or beyond %d per sample); they are left out",
                provider.name,
                dropped,
                MAX_PROVIDER_METRICS,
            )
        provider.dropping = dropped > 0

    def _provider_failed(self, provider: Provider, reason: str, exc: BaseException | None) -> None:
        self._provider_failures += 1
        provider.failed_samples += 1
        if provider.failed_samples == 1:
            logger.warning(
                "metrics provider %r failed (%s); its metrics are left out until it recovers",
                provider.name,
                reason,
                exc_info=exc,
            )
