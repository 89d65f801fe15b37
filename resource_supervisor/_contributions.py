"""
How the supervisor's parts put their counters into each snapshot: one interface.

Covers: :class:`MetricsContributor`, the one method every part offers
(``metrics()``: its own keys and current values), :func:`gather`, which merges the
contributions of several parts into a sample, and :class:`StreamMetrics`, the
contribution of the supervisor's two broadcasters. Does not cover: what each part
counts (their ``metrics()``) or the key registry (:mod:`._metric_keys`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._snapshot import MetricValue
    from ._streams import Broadcaster

__all__ = ("MetricsContributor", "StreamMetrics", "gather")


class MetricsContributor(Protocol):
    """A part that contributes its own metrics to every snapshot."""

    def metrics(self) -> Mapping[str, MetricValue]:
        """Its keys (in its own namespace, see :mod:`._metric_keys`) and current values."""
        ...


def gather(data: dict[str, MetricValue], parts: Iterable[MetricsContributor]) -> None:
    """Add every part's metrics to *data*, in order (a later part's key wins)."""
    for part in parts:
        data.update(part.metrics())


class StreamMetrics:
    """The supervisor's streams: subscribers, items dropped for slow readers, refusals."""

    def __init__(self, snapshots: Broadcaster[Any], events: Broadcaster[Any]) -> None:
        self._snapshots = snapshots
        self._events = events
        self.refused = 0
        """Event streams an integration refused over its cap."""

    def metrics(self) -> dict[str, MetricValue]:
        """Subscribers of snapshots, items dropped from both streams, refused streams."""
        snapshots = self._snapshots
        return {
            "stream_subscribers": snapshots.subscribers,
            "stream_dropped_total": snapshots.dropped_total() + self._events.dropped_total(),
            "stream_refused_total": self.refused,
        }
