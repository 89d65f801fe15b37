"""
When the supervisor samples next: at the interval, or early on a kernel notification.

Covers: :class:`SampleTimer`, which arms the kernel memory notifications
(:class:`~._sources._notify.MemoryNotifier`) when the settings and the source allow,
waits for the next deadline or notification (rate-limited by
:func:`~._sources._arming.next_sample_at`), keeps the notifier's thresholds in step
with each sample's limit, and contributes its counters to the snapshot. Does not
cover: sampling itself (:mod:`._supervisor`) or the notification mechanisms
(:mod:`._sources._notify`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from ._sampler import Sampler
from ._sources._arming import next_sample_at
from ._sources._notify import MemoryNotifier

if TYPE_CHECKING:
    import contextlib

    from ._config import SupervisorSettings
    from ._metric_source import MetricSource
    from ._snapshot import MetricValue

__all__ = ("SampleTimer",)

logger = logging.getLogger("resource_supervisor")


class SampleTimer:
    """
    The sampling loop's clock: deadlines, notifications and their counters.

    Also a :class:`~._contributions.MetricsContributor`: the notifier's figures,
    ``memory_notified_samples_total`` when notifications are armed, and
    ``sample_failures_total``.
    """

    def __init__(self) -> None:
        self._notifier: MemoryNotifier | None = None
        self._wanted: anyio.Event | None = None
        self._last_sample_at: float | None = None
        self._notified_samples = 0
        self.failures = 0
        """Samples of the loop that raised (the loop goes on)."""

    def start(
        self,
        settings: SupervisorSettings,
        source: MetricSource,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        """Arm the notifications when enabled and *source* is the built-in sampler."""
        s = settings
        # Only the built-in sampler reads the kernel figures a notification is about.
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
        self._wanted = anyio.Event()

    def _request_sample(self, source: str) -> None:
        wanted = self._wanted
        if wanted is not None:
            wanted.set()

    async def wait(self, deadline: float) -> bool:
        """
        Sleep until *deadline* or a notification (rate-limited); True when notified.

        Cancellation:
            Stops waiting; nothing is counted.
        """
        if self._wanted is None:
            await anyio.sleep_until(deadline)
            return False
        with anyio.CancelScope(deadline=deadline):
            await self._wanted.wait()
            self._wanted = anyio.Event()  # before sampling: later ones wake again
            await anyio.sleep_until(next_sample_at(self._last_sample_at, anyio.current_time()))
            self._notified_samples += 1
            return True
        return False

    def sampling(self) -> None:
        """Note that a sample starts now (the rate limit counts from here)."""
        self._last_sample_at = anyio.current_time()

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
