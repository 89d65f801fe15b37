"""
Polling the Dask cluster: its figures, its level and the lane's cap, now and then.

Covers: :class:`ClusterPolling`, the part of :class:`._lane.DaskLane` that reads
the scheduler's identity and facts (once on entry, then every
``dask.poll_interval`` seconds), keeps the last :class:`._pressure.ClusterReading`
and worker addresses, grades the cluster's level, sets the lane's cap to the
cluster's threads, and on a connected cluster checks the delivery guarantee once;
and :func:`worker_thresholds` (the workers' spill and pause fractions from Dask's
config). Does not cover: grading itself (:mod:`._pressure`, pure), reading the
scheduler's facts (:func:`._cluster.probe_scheduler`) or admission (:mod:`._lane`).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import TYPE_CHECKING, Protocol

from ._cluster import probe_scheduler
from ._pressure import ClusterReading, ClusterThresholds, grade_cluster, parse_identity

if TYPE_CHECKING:
    import anyio

    from ..._config import ConcurrencySettings
    from ..._snapshot import PressureLevel
    from ._cluster import ClusterHandle

__all__ = ("ClusterPolling", "worker_thresholds")

_LOG = logging.getLogger("resource_supervisor.broker.dask")


def worker_thresholds() -> ClusterThresholds:
    """The workers' spill and pause fractions, as Dask's config gives them to our workers."""
    import dask

    def fraction(key: str, default: float) -> float | None:
        value = dask.config.get(f"distributed.worker.memory.{key}", default)
        if value is False or value is None:
            return None
        return float(value)

    return ClusterThresholds(spill=fraction("spill", 0.7), pause=fraction("pause", 0.8))


class _Lane(Protocol):
    """What these methods use of the lane."""

    _settings: ConcurrencySettings
    _handle: ClusterHandle | None
    _limiter: anyio.CapacityLimiter
    _thresholds: ClusterThresholds
    _reading: ClusterReading
    _workers: tuple[str, ...]
    _cluster_level: PressureLevel
    _at_least_once: bool

    async def _poll_once(self, *, first: bool = False) -> None: ...
    def _check_delivery(self, allowed_failures: int | None) -> None: ...


class ClusterPolling:
    """Mixin of :class:`._lane.DaskLane`: the cluster read now and then."""

    # set here, declared by the lane
    _reading: ClusterReading
    _workers: tuple[str, ...]
    _cluster_level: PressureLevel
    _at_least_once: bool

    # -- pressure ----------------------------------------------------------------
    async def _poll_once(self: _Lane, *, first: bool = False) -> None:
        handle = self._handle
        if handle is None:
            return
        identity = await handle.client.scheduler.identity(n_workers=-1)  # type: ignore[attr-defined]
        facts = await probe_scheduler(handle.client)
        reading = parse_identity(identity, queue_depth=facts.queue_depth or 0)
        self._reading = reading
        workers = identity.get("workers") if isinstance(identity, dict) else None
        self._workers = tuple(str(address) for address in workers) if workers else ()
        self._cluster_level = grade_cluster(reading, self._thresholds)
        # The cap follows the cluster's threads (workers come, go, or are scaled).
        self._limiter.total_tokens = max(1, reading.threads)
        if first and not handle.owned:
            self._check_delivery(facts.allowed_failures)

    def _check_delivery(self: _Lane, allowed_failures: int | None) -> None:
        if self._settings.dask.retries > 0 or allowed_failures == 0:
            return
        self._at_least_once = True
        seen = "cannot be read" if allowed_failures is None else f"is {allowed_failures}"
        warnings.warn(
            f"the Dask scheduler's allowed-failures {seen}: a call whose worker dies may "
            "run again elsewhere (at-least-once); set distributed.scheduler.allowed-failures"
            " to 0 on the scheduler for at-most-once",
            RuntimeWarning,
            stacklevel=3,
        )

    async def _poll_forever(self: _Lane) -> None:
        interval = self._settings.dask.poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._poll_once()
            except Exception as exc:  # noqa: BLE001 - keep the last reading; try again
                _LOG.debug("polling the Dask cluster failed: %r", exc)
