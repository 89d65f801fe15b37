"""
When the supervisor samples next: at the interval, or early on a kernel notification.

Covers: :class:`SampleTimer`, which arms the kernel memory notifications
(:class:`~._sources._notify.MemoryNotifier`) when the settings and the source allow,
waits for the next deadline or notification (rate-limited by
:func:`~._sources._arming.next_sample_at`), has the built-in sampler read its files
at the deadline in its own thread (:meth:`~._sampler.Sampler.read_at`), keeps the
notifier's thresholds in step with each sample's limit, and contributes its counters
to the snapshot; and :class:`Wake`, what a wait ends with. Does not cover: sampling
itself (:mod:`._supervisor`) or the notification mechanisms (:mod:`._sources._notify`).

Why read at the deadline. A timer sample that asks the sampler's thread for its
reads wakes the loop twice: once at the deadline to ask, once when the reads are
done. Here the thread waits for the deadline itself, reads, and only then wakes the
loop with the figures: one wake-up per sample, and the loop's time is spent on the
snapshot alone. A notification still samples at once, its reads handed to the
thread as any sample on demand.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, NamedTuple

import anyio

from ._sampler import Sampler
from ._sources._arming import next_sample_at
from ._sources._notify import MemoryNotifier

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable

    from ._config import SupervisorSettings
    from ._metric_source import MetricSource
    from ._snapshot import MetricValue
    from ._sources._read_thread import ScheduledRead

__all__ = ("SampleTimer", "Wake")

logger = logging.getLogger("resource_supervisor")

_NOTIFIED = object()  # what a notification settles a wait with


class Wake(NamedTuple):
    """How a :meth:`SampleTimer.wait` ended."""

    notified: bool
    """A kernel notification ended it (else the deadline)."""
    readings: dict[str, MetricValue] | None
    """The built-in sampler's file figures, read at the deadline; ``None`` when the
    sample must read them itself."""


def _settle(waiter: asyncio.Future[object], outcome: object) -> None:
    if not waiter.done():
        waiter.set_result(outcome)


class SampleTimer:
    """
    The sampling loop's clock: deadlines, notifications and their counters.

    Also a :class:`~._contributions.MetricsContributor`: the notifier's figures,
    ``memory_notified_samples_total`` when notifications are armed, and
    ``sample_failures_total``.
    """

    def __init__(self) -> None:
        self._notifier: MemoryNotifier | None = None
        self._reader: Sampler | None = None  # reads its files at each deadline
        self._waiter: asyncio.Future[object] | None = None
        self._notified = False  # a notification not yet served by a sample
        self._last_sample_at: float | None = None
        # anyio.current_time() finds the backend on every call (a tenth of a sample's
        # Python): on asyncio, the loop's own clock, which is the same time.
        self.now: Callable[[], float] = anyio.current_time
        """The clock of deadlines (``anyio.current_time()``)."""
        self._notified_samples = 0
        self.failures = 0
        """Samples of the loop that raised (the loop goes on)."""

    def start(
        self,
        settings: SupervisorSettings,
        source: MetricSource,
        stack: contextlib.AsyncExitStack,
        *,
        read_ahead: bool = False,
    ) -> None:
        """
        Arm the notifications when enabled and *source* is the built-in sampler;
        with *read_ahead* (the sampler is what the supervisor samples, nothing
        wraps it) it reads at each deadline in its thread.
        """
        s = settings
        if not (s.monitoring_enabled and isinstance(source, Sampler)):
            return
        try:
            self.now = asyncio.get_running_loop().time
        except RuntimeError:  # another event loop: the sampler's thread serves asyncio
            return
        if read_ahead:
            self._reader = source
        # Only the built-in sampler reads the kernel figures a notification is about.
        if not s.memory_notifications:
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
        except (RuntimeError, NotImplementedError) as exc:  # no add_reader on this loop
            logger.debug("memory notifications unavailable on this loop (%s): polling", exc)
            return
        stack.callback(notifier.close)
        self._notifier = notifier

    def _request_sample(self, source: str) -> None:
        self._notified = True
        if self._waiter is not None:
            _settle(self._waiter, _NOTIFIED)

    async def wait(self, deadline: float) -> Wake:
        """
        Sleep until *deadline* (``anyio.current_time()``) or a notification
        (rate-limited); at the deadline, with the sampler's readings when it reads
        ahead.

        Cancellation:
            Stops waiting; a read not started yet is skipped; nothing is counted.
        """
        if not self._notified:
            outcome = await self._until(deadline)
            if outcome is not _NOTIFIED:
                return Wake(notified=False, readings=outcome)  # type: ignore[arg-type]
        self._notified = False  # before sampling: later ones wake again
        await anyio.sleep_until(next_sample_at(self._last_sample_at, self.now()))
        self._notified_samples += 1
        return Wake(notified=True, readings=None)

    async def _until(self, deadline: float) -> object:
        """The readings (or ``None``) at *deadline*, or ``_NOTIFIED`` before it."""
        reader = self._reader
        if reader is None and self._notifier is None:
            await anyio.sleep_until(deadline)
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[object] = loop.create_future()
        scheduled: ScheduledRead | None = None
        timer: asyncio.TimerHandle | None = None
        if reader is not None:
            when = time.monotonic() + (deadline - loop.time())
            scheduled = reader.read_at(when, functools.partial(self._read_done, waiter))
        if scheduled is None:
            timer = loop.call_at(deadline, _settle, waiter, None)
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None
            if scheduled is not None:
                scheduled.cancel()
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _read_done(waiter: asyncio.Future[object], outcome: tuple[bool, object]) -> None:
        ok, value = outcome
        # A pass that raised (the sampler closing): the sample reads, and reports, itself.
        _settle(waiter, value if ok else None)

    def sampling(self) -> None:
        """Note that a sample starts now (the rate limit counts from here)."""
        self._last_sample_at = self.now()

    def sampled(self, raw: dict[str, MetricValue]) -> None:
        """Re-arm the thresholds on *raw*'s effective limit when it changed."""
        if self._notifier is not None:
            self._notifier.update(str(raw["memory_limit_source"]), int(raw["memory_limit_bytes"]))

    def metrics(self) -> dict[str, MetricValue]:
        """The notifier's figures and the sampling counters."""
        data: dict[str, MetricValue] = {"sample_failures_total": self.failures}
        if self._notifier is not None:
            data.update(self._notifier.metrics())
            data["memory_notified_samples_total"] = self._notified_samples
        return data
