"""Tests of the pure batching decisions of the process lane."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor.broker._local._dispatch import (
    BATCH_MAX_CALL_SECONDS,
    batch_size,
    sort_unfinished,
)
from resource_supervisor.broker._local._protocol import MAX_BATCH

SHORT = BATCH_MAX_CALL_SECONDS / 2


@dataclass(frozen=True)
class Queued:
    """A queued call as the batching rules see it."""

    timeout: float | None = None


@dataclass(frozen=True)
class Handed:
    """A handed-over call as the death accounting sees it."""

    seq: int


queues = st.lists(st.sampled_from([None, 1.0]).map(Queued), max_size=3 * MAX_BATCH)
call_times = st.one_of(st.none(), st.floats(0.0, 4 * BATCH_MAX_CALL_SECONDS))


def test_empty_queue_gives_empty_batch() -> None:
    """Nothing queued: a free slot takes nothing."""
    assert batch_size([], call_seconds=SHORT, free_slots=1, quota_left=None) == 0


def test_unmeasured_or_slow_calls_are_not_batched() -> None:
    """Before any call was measured, and while calls are slow, a batch is one call."""
    queue = [Queued()] * 10
    assert batch_size(queue, call_seconds=None, free_slots=1, quota_left=None) == 1
    slow = BATCH_MAX_CALL_SECONDS
    assert batch_size(queue, call_seconds=slow, free_slots=1, quota_left=None) == 1


def test_short_calls_are_shared_among_free_slots() -> None:
    """Ten short calls and three free slots: this slot takes ceil(10 / 3) = 4."""
    queue = [Queued()] * 10
    assert batch_size(queue, call_seconds=SHORT, free_slots=3, quota_left=None) == 4


def test_batch_stops_at_a_call_with_a_timeout() -> None:
    """A call with a timeout is never batched: it ends a batch, or runs alone when first."""
    queue = [Queued(), Queued(), Queued(1.0), Queued()]
    assert batch_size(queue, call_seconds=SHORT, free_slots=1, quota_left=None) == 2
    assert batch_size(queue[2:], call_seconds=SHORT, free_slots=1, quota_left=None) == 1


def test_quota_caps_the_batch_but_never_below_one() -> None:
    """A worker with 2 calls left takes 2; one past its quota still takes 1."""
    queue = [Queued()] * 10
    assert batch_size(queue, call_seconds=SHORT, free_slots=1, quota_left=2) == 2
    assert batch_size(queue, call_seconds=SHORT, free_slots=1, quota_left=0) == 1


@given(
    queue=queues,
    call_seconds=call_times,
    free_slots=st.integers(1, 8),
    quota_left=st.one_of(st.none(), st.integers(-2, 2 * MAX_BATCH)),
)
def test_batch_respects_every_rule(
    queue: list[Queued], call_seconds: float | None, free_slots: int, quota_left: int | None
) -> None:
    """A batch is the longest timeout-free run at the head allowed by every cap (rules 1-4)."""
    size = batch_size(
        queue, call_seconds=call_seconds, free_slots=free_slots, quota_left=quota_left
    )
    if not queue:
        assert size == 0
        return
    limit = 1
    if call_seconds is not None and call_seconds < BATCH_MAX_CALL_SECONDS:
        limit = min(MAX_BATCH, math.ceil(len(queue) / free_slots))
    if quota_left is not None:
        limit = max(1, min(limit, quota_left))
    assert 1 <= size <= min(limit, len(queue))
    batch = queue[:size]
    if size > 1:
        assert all(call.timeout is None for call in batch)
    if size < min(limit, len(queue)):
        # stopped early only because a call with a timeout is first or next in line
        assert queue[0].timeout is not None or queue[size].timeout is not None


@given(
    seqs=st.lists(st.integers(0, 40), unique=True, max_size=20).map(sorted),
    started=st.integers(-1, 45),
)
def test_unfinished_calls_are_sorted_by_progress(seqs: list[int], started: int) -> None:
    """Each call lands in exactly one group: running has the progress number, higher never ran."""
    calls = [Handed(seq) for seq in seqs]
    running, not_started, lost = sort_unfinished(calls, started)
    groups = ([] if running is None else [running]) + not_started + lost
    assert sorted(groups, key=lambda c: c.seq) == calls
    assert (running is not None) == (started in seqs)
    assert running is None or running.seq == started
    assert not_started == [c for c in calls if c.seq > started]
    assert lost == [c for c in calls if c.seq < started]


def test_running_call_is_the_first_with_the_progress_number() -> None:
    """A duplicate number (never produced by a worker) is reported lost, not run twice."""
    first, second = Handed(3), Handed(3)
    running, not_started, lost = sort_unfinished([first, second, Handed(4)], 3)
    assert running is first
    assert lost == [second]
    assert not_started == [Handed(4)]
