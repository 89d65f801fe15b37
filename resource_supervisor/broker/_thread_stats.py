"""
Statistics of the thread lane: a point-in-time view and its snapshot metrics.

Covers: :class:`ThreadLaneStatistics` and :func:`thread_lane_metrics` (the view as
flat ``thread_lane_*`` snapshot metrics). Does not cover: the counters themselves,
kept by the lane (:mod:`._threads`, :mod:`._thread_workers`), or the process
lane's statistics (:mod:`._local._stats`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._snapshot import MetricValue

__all__ = ("ThreadLaneStatistics", "thread_lane_metrics")


@dataclasses.dataclass(frozen=True, slots=True)
class ThreadLaneStatistics:
    """
    A point-in-time view of a :class:`ThreadLane`.

    Attributes:
        capacity: Most lane threads that may exist at once.
        busy: Calls running in a lane thread now (abandoned ones included).
        queued: Calls waiting for a lane thread.
        threads: Lane threads alive now (busy or idle).
        completed: Calls that returned, since the lane started.
        failed: Calls that raised, since the lane started.
        abandoned: Calls still running whose caller left (``timeout=`` expired, or
            cancelled with ``abandon_on_cancel=True``); each holds a lane thread.
        abandoned_total: Calls ever abandoned, since the lane started.
    """

    capacity: int
    busy: int
    queued: int
    threads: int
    completed: int
    failed: int
    abandoned: int = 0
    abandoned_total: int = 0


def thread_lane_metrics(stats: ThreadLaneStatistics) -> dict[str, MetricValue]:
    """
    Return *stats* as flat ``thread_lane_*`` snapshot metrics.

    Args:
        stats: The lane's statistics now.

    Returns:
        ``thread_lane_busy``, ``thread_lane_capacity``, ``thread_lane_queued``,
        ``thread_lane_threads``, ``thread_lane_completed_total``,
        ``thread_lane_failed_total``, ``thread_lane_abandoned`` and
        ``thread_lane_abandoned_total``.
    """
    return {
        "thread_lane_busy": stats.busy,
        "thread_lane_capacity": stats.capacity,
        "thread_lane_queued": stats.queued,
        "thread_lane_threads": stats.threads,
        "thread_lane_completed_total": stats.completed,
        "thread_lane_failed_total": stats.failed,
        "thread_lane_abandoned": stats.abandoned,
        "thread_lane_abandoned_total": stats.abandoned_total,
    }
