"""Tests of the process lane's statistics view and metrics."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from resource_supervisor.broker._local._slot import Call, Slot, SlotState
from resource_supervisor.broker._local._stats import (
    LaneCounters,
    ProcessLaneStatistics,
    lane_metrics,
    lane_snapshot_metrics,
    lane_statistics,
)


async def test_statistics_count_live_busy_and_pids() -> None:
    """Dead slots are not counted; in-flight ones are busy, starting ones apart; started pids."""
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    busy = Slot(state=SlotState.BUSY, pid=11)
    busy.in_flight.append(Call(b"", "f", None, future, kill_on_cancel=True))
    slots = [
        Slot(state=SlotState.STARTING),
        Slot(state=SlotState.IDLE, pid=10),
        busy,
        Slot(state=SlotState.RETIRING, pid=12),
        Slot(state=SlotState.DEAD, pid=13),
    ]
    counters = LaneCounters(completed=5, failed=4, crashed=3, recycled=2, refused=1, timeouts=6)
    stats = lane_statistics(slots, target=3, queue_depth=7, counters=counters)
    assert stats == ProcessLaneStatistics(
        workers_live=4,
        workers_target=3,
        workers_busy=1,
        queue_depth=7,
        completed_total=5,
        failed_total=4,
        crashed_total=3,
        recycled_total=2,
        refused_total=1,
        timeouts_total=6,
        worker_pids=(10, 11, 12),
        workers_starting=1,
    )


def test_statistics_are_a_snapshot() -> None:
    """Counting later does not change a view already taken."""
    counters = LaneCounters()
    stats = lane_statistics([], target=0, queue_depth=0, counters=counters)
    counters.completed += 1
    assert stats.completed_total == 0
    assert lane_statistics([], target=0, queue_depth=0, counters=counters).completed_total == 1


def test_metrics_name_every_statistic_with_its_unit_suffix() -> None:
    """Every statistic but the pids is a process_* metric; totals end in _total."""
    stats = ProcessLaneStatistics(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, (42,))
    metrics = lane_metrics(stats, backend="local")
    assert metrics == {
        "process_workers_live": 1,
        "process_workers_target": 2,
        "process_workers_busy": 3,
        "process_workers_starting": 0,
        "process_worker_rss_max_bytes": 0,
        "process_worker_rss_bytes": 0,
        "process_oom_kills_total": 0,
        "process_memory_kills_total": 0,
        "process_queue_depth": 4,
        "process_completed_total": 5,
        "process_failed_total": 6,
        "process_crashed_total": 7,
        "process_recycled_total": 8,
        "process_refused_total": 9,
        "process_timeouts_total": 10,
        "process_lane_backend": "local",
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(SlotState)),
            st.integers(0, 2**40),
            st.integers(0, 3),
            st.integers(0, 99),
        ),
        max_size=8,
    ),
    st.integers(0, 50),
    st.integers(0, 50),
    st.lists(st.integers(0, 1000), min_size=8, max_size=8),
)
def test_snapshot_metrics_are_the_metrics_of_the_view(
    shapes: list[tuple[SlotState, int, int, int]],
    target: int,
    queue_depth: int,
    totals: list[int],
) -> None:
    """The lane's per-sample metrics, counted in one pass, equal those of its view."""
    slots = []
    for state, rss, calls, pid in shapes:
        slot = Slot(state=state, pid=pid, rss_bytes=rss)
        slot.in_flight.extend([None] * calls)  # type: ignore[list-item]  # only counted
        slots.append(slot)
    counters = LaneCounters(*totals)
    stats = lane_statistics(slots, target=target, queue_depth=queue_depth, counters=counters)
    fast = lane_snapshot_metrics(
        slots, target=target, queue_depth=queue_depth, counters=counters, backend="local"
    )
    assert fast == lane_metrics(stats, backend="local")
    assert list(fast) == list(lane_metrics(stats, backend="local"))  # same order
