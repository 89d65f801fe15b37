"""
The supervisor's registration, subscription and manual-cleanup methods.

Covers: :class:`Registrations`, the part of :class:`~._supervisor.Supervisor`
through which an application plugs in (cleanup handlers, metrics providers) and
listens (snapshot and event streams, the container's peers). Each method only
delegates to the part that owns the registry. Does not cover: running handlers
(:mod:`._cleanup`), sampling (:mod:`._sampler`) or the streams (:mod:`._streams`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from ._cleanup import CleanupRequest
from ._events import CleanupCompleted
from ._exceptions import SupervisorClosedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._cleanup import CleanupDispatcher, CleanupHandler, CleanupReport
    from ._config import SupervisorSettings
    from ._container import Container
    from ._contributions import StreamMetrics
    from ._decision import PolicyState
    from ._events import SupervisorEvent
    from ._metric_source import MetricSource
    from ._peers import Peer
    from ._snapshot import MetricsSnapshot
    from ._streams import Broadcaster, Subscription

__all__ = ("Registrations",)

logger = logging.getLogger("resource_supervisor")


class Registrations:
    """Registration, subscription and manual cleanup: a base of the supervisor."""

    _settings: SupervisorSettings
    _cleanup: CleanupDispatcher
    _source: MetricSource
    _provider_names: list[str]
    _snapshots: Broadcaster[MetricsSnapshot]
    _events: Broadcaster[SupervisorEvent]
    _container: Container
    _stream_metrics: StreamMetrics
    _state: Literal["new", "running", "closed"]
    _policy: PolicyState
    _metrics: MetricsSnapshot | None

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
        self._stream_metrics.refused += 1

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
            level=self._policy.level,
            reason=reason,
            snapshot=self._metrics,
            resource="manual",
        )
        return await self._run_cleanup(request, automatic=False)
