"""
Statistics and metrics of the local process lane.

Covers: :class:`ProcessLaneStatistics` (the frozen view ``ProcessLane.statistics()``
returns), :class:`LaneCounters` (the lane's running totals), :func:`lane_statistics`
(counts a lane's slots and queue into a view), :func:`lane_metrics` (the flat
``process_*`` metrics of a view) and :func:`lane_snapshot_metrics` (the same metrics
counted straight from the slots, without the view: the lane's part of every
sample). Pure: no I/O, clock or await. Does not cover:
when the counters move (:mod:`._lane`), the slots themselves (:mod:`._slot`),
the thread lane's statistics (:mod:`.._threads`) or the Dask backend's
(:mod:`.._dask._lane`). See also :mod:`...integrations.prometheus`, which exports these
metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._slot import SlotState

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..._snapshot import MetricValue
    from ._slot import Slot

__all__ = (
    "LaneCounters",
    "ProcessLaneStatistics",
    "lane_metrics",
    "lane_snapshot_metrics",
    "lane_statistics",
)


@dataclass(frozen=True, slots=True)
class ProcessLaneStatistics:
    """
    A consistent view of the process lane's state.

    Attributes:
        workers_live: Worker slots started or starting.
        workers_target: Slots the sizing policy wants now.
        workers_busy: Slots running calls.
        queue_depth: Calls waiting for a worker.
        completed_total: Calls that returned a result.
        failed_total: Calls that raised (in the worker, crashed, or timed out).
        crashed_total: Workers that died unexpectedly.
        recycled_total: Workers retired after ``max_tasks_per_worker`` calls or above
            ``worker_max_rss_bytes``.
        refused_total: Calls refused with :class:`OverloadedError`.
        timeouts_total: Calls that exceeded their ``timeout=``.
        worker_pids: Pids of the started workers.
        workers_starting: Slots whose worker is still starting (not busy).
        worker_rss_max_bytes: Resident memory of the largest worker, when last
            measured (each sample).
        worker_rss_bytes: Resident memory of all workers together, when last measured.
        oom_kills_total: Workers the kernel's OOM killer ended.
        memory_kills_total: Workers the lane killed at CRITICAL pressure because they
            held more memory than the service.
    """

    workers_live: int
    workers_target: int
    workers_busy: int
    queue_depth: int
    completed_total: int
    failed_total: int
    crashed_total: int
    recycled_total: int
    refused_total: int
    timeouts_total: int
    worker_pids: tuple[int, ...]
    workers_starting: int = 0
    worker_rss_max_bytes: int = 0
    worker_rss_bytes: int = 0
    oom_kills_total: int = 0
    memory_kills_total: int = 0


@dataclass(eq=False, slots=True)
class LaneCounters:
    """The lane's running totals; the fields mean what the ``*_total`` statistics mean."""

    completed: int = 0
    failed: int = 0
    crashed: int = 0
    recycled: int = 0
    refused: int = 0
    timeouts: int = 0
    oom_kills: int = 0
    memory_kills: int = 0


def lane_statistics(
    slots: Iterable[Slot], *, target: int, queue_depth: int, counters: LaneCounters
) -> ProcessLaneStatistics:
    """
    Count a lane's slots into a statistics view.

    Args:
        slots: The lane's slots; dead ones are not counted.
        target: Slots the sizing policy wants now.
        queue_depth: Calls waiting for a worker.
        counters: The lane's running totals.

    Returns:
        A frozen :class:`ProcessLaneStatistics`.
    """
    live = [s for s in slots if s.state is not SlotState.DEAD]
    return ProcessLaneStatistics(
        workers_live=len(live),
        workers_target=target,
        workers_busy=sum(1 for s in live if s.in_flight),
        workers_starting=sum(1 for s in live if s.state is SlotState.STARTING),
        worker_rss_max_bytes=max((s.rss_bytes for s in live), default=0),
        worker_rss_bytes=sum(s.rss_bytes for s in live),
        oom_kills_total=counters.oom_kills,
        memory_kills_total=counters.memory_kills,
        queue_depth=queue_depth,
        completed_total=counters.completed,
        failed_total=counters.failed,
        crashed_total=counters.crashed,
        recycled_total=counters.recycled,
        refused_total=counters.refused,
        timeouts_total=counters.timeouts,
        worker_pids=tuple(s.pid for s in live if s.pid),
    )


def lane_metrics(stats: ProcessLaneStatistics, *, backend: str) -> dict[str, MetricValue]:
    """
    Return the flat ``process_*`` metrics of *stats*.

    Args:
        stats: The lane's statistics.
        backend: The lane's name, reported as ``process_lane_backend``.

    Returns:
        Metric name to value, one per statistic except ``worker_pids``.
    """
    return {
        "process_workers_live": stats.workers_live,
        "process_workers_target": stats.workers_target,
        "process_workers_busy": stats.workers_busy,
        "process_workers_starting": stats.workers_starting,
        "process_worker_rss_max_bytes": stats.worker_rss_max_bytes,
        "process_worker_rss_bytes": stats.worker_rss_bytes,
        "process_oom_kills_total": stats.oom_kills_total,
        "process_memory_kills_total": stats.memory_kills_total,
        "process_queue_depth": stats.queue_depth,
        "process_completed_total": stats.completed_total,
        "process_failed_total": stats.failed_total,
        "process_crashed_total": stats.crashed_total,
        "process_recycled_total": stats.recycled_total,
        "process_refused_total": stats.refused_total,
        "process_timeouts_total": stats.timeouts_total,
        "process_lane_backend": backend,
    }


def lane_snapshot_metrics(
    slots: Iterable[Slot],
    *,
    target: int,
    queue_depth: int,
    counters: LaneCounters,
    backend: str,
) -> dict[str, MetricValue]:
    """
    ``lane_metrics(lane_statistics(...), backend=backend)``, counted in one pass.

    The lane's part of every sample: no view is built and the slots are walked
    once (the view and its conversion were a fifth of a timer sample's Python).

    Args:
        slots: The lane's slots; dead ones are not counted.
        target: Slots the sizing policy wants now.
        queue_depth: Calls waiting for a worker.
        counters: The lane's running totals.
        backend: The lane's name, reported as ``process_lane_backend``.

    Returns:
        The same metrics as :func:`lane_metrics` of :func:`lane_statistics`.
    """
    live = busy = starting = rss_max = rss_total = 0
    dead, starting_state = SlotState.DEAD, SlotState.STARTING
    for slot in slots:
        state = slot.state
        if state is dead:
            continue
        live += 1
        if slot.in_flight:
            busy += 1
        if state is starting_state:
            starting += 1
        rss = slot.rss_bytes
        rss_total += rss
        if rss > rss_max:
            rss_max = rss
    c = counters
    return {
        "process_workers_live": live,
        "process_workers_target": target,
        "process_workers_busy": busy,
        "process_workers_starting": starting,
        "process_worker_rss_max_bytes": rss_max,
        "process_worker_rss_bytes": rss_total,
        "process_oom_kills_total": c.oom_kills,
        "process_memory_kills_total": c.memory_kills,
        "process_queue_depth": queue_depth,
        "process_completed_total": c.completed,
        "process_failed_total": c.failed,
        "process_crashed_total": c.crashed,
        "process_recycled_total": c.recycled,
        "process_refused_total": c.refused,
        "process_timeouts_total": c.timeouts,
        "process_lane_backend": backend,
    }
