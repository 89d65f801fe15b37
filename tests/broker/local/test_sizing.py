"""Tests of the pure sizing and admission policy of the process lane."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker._local._sizing import admits, pressure_cap, target_workers

N, W, C = PressureLevel.NORMAL, PressureLevel.WARNING, PressureLevel.CRITICAL


@pytest.mark.parametrize(
    ("kwargs", "target", "start", "retire"),
    [
        # nothing to do, nothing started (lazy start)
        ({"queued": 0, "busy": 0, "live": 0, "idle_expired": 0, "level": N}, 0, 0, 0),
        # work waits: grow up to the queue
        ({"queued": 3, "busy": 0, "live": 0, "idle_expired": 0, "level": N}, 3, 3, 0),
        # work waits beyond max: grow to max only
        ({"queued": 9, "busy": 1, "live": 1, "idle_expired": 0, "level": N}, 4, 3, 0),
        # idle but not expired: kept warm
        ({"queued": 0, "busy": 1, "live": 3, "idle_expired": 0, "level": N}, 3, 0, 0),
        # two idle past the timeout: those two retire, the busy one is untouched
        ({"queued": 0, "busy": 1, "live": 3, "idle_expired": 2, "level": N}, 1, 0, 2),
        # WARNING: half of max; idle ones above it retire now
        ({"queued": 0, "busy": 1, "live": 4, "idle_expired": 0, "level": W}, 2, 0, 2),
        # CRITICAL: one worker; busy ones above it are not retired now
        ({"queued": 5, "busy": 3, "live": 4, "idle_expired": 0, "level": C}, 1, 0, 1),
        # CRITICAL with nothing live and work waiting: start exactly one
        ({"queued": 5, "busy": 0, "live": 0, "idle_expired": 0, "level": C}, 1, 1, 0),
    ],
)
def test_target_workers_table(kwargs: dict[str, int], target: int, start: int, retire: int) -> None:
    """Each row pins one rule of the module docstring (grow, keep warm, expire, cap)."""
    decision = target_workers(max_workers=4, **kwargs)  # type: ignore[arg-type]
    assert (decision.target, decision.start, decision.retire_idle) == (target, start, retire)


def test_growth_waits_for_settle_time_after_pressure() -> None:
    """Back at NORMAL the cap stays at half until NORMAL has held for settle_seconds."""
    early = target_workers(
        max_workers=4, queued=8, busy=1, live=1, idle_expired=0, level=N,
        calm_for=1.0, settle_seconds=5.0,
    )  # fmt: skip
    late = target_workers(
        max_workers=4, queued=8, busy=1, live=1, idle_expired=0, level=N,
        calm_for=6.0, settle_seconds=5.0,
    )  # fmt: skip
    assert (early.cap, early.start) == (2, 1)
    assert (late.cap, late.start) == (4, 3)


def test_pressure_cap_levels() -> None:
    """NORMAL allows max, WARNING half (at least one), CRITICAL one."""
    inf = float("inf")
    assert pressure_cap(8, N, calm_for=inf, settle_seconds=1) == 8
    assert pressure_cap(8, W, calm_for=0, settle_seconds=1) == 4
    assert pressure_cap(1, W, calm_for=0, settle_seconds=1) == 1
    assert pressure_cap(8, C, calm_for=0, settle_seconds=1) == 1


def test_admission_only_refuses_at_critical_beyond_limit() -> None:
    """admits() is False only at CRITICAL with queue_limit calls already queued."""
    assert admits(level=W, queued=100, queue_limit=1)
    assert admits(level=C, queued=0, queue_limit=1)
    assert not admits(level=C, queued=1, queue_limit=1)
    assert not admits(level=C, queued=0, queue_limit=0)


@st.composite
def _inputs(draw: st.DrawFn) -> dict[str, object]:
    max_workers = draw(st.integers(1, 64))
    live = draw(st.integers(0, 2 * max_workers))
    busy = draw(st.integers(0, live))
    starting = draw(st.integers(0, live - busy))
    return {
        "max_workers": max_workers,
        "queued": draw(st.integers(0, 1000)),
        "busy": busy,
        "starting": starting,
        "live": live,
        "idle_expired": draw(st.integers(0, live - busy - starting)),
        "level": draw(st.sampled_from(PressureLevel)),
        "calm_for": draw(st.floats(0, 100)),
        "settle_seconds": draw(st.floats(0, 10)),
    }


@given(_inputs())
def test_decision_bounds(kwargs: dict[str, object]) -> None:
    """Target within [0, cap] and never above max; starts stay within the cap; only idle retire."""
    decision = target_workers(**kwargs)  # type: ignore[arg-type]
    live, busy, queued = int(kwargs["live"]), int(kwargs["busy"]), int(kwargs["queued"])  # type: ignore[call-overload]
    assert 0 <= decision.target <= decision.cap <= int(kwargs["max_workers"])  # type: ignore[call-overload]
    assert decision.start >= 0
    assert live + decision.start <= max(live, decision.cap)
    starting = int(kwargs["starting"])  # type: ignore[call-overload]
    assert 0 <= decision.retire_idle <= live - busy - starting
    if queued > 0:
        assert decision.target >= 1
        assert live + decision.start >= 1
    if kwargs["level"] == C:
        assert decision.target == 1 or (decision.target == 0 and queued == 0 and busy == 0)


@given(_inputs())
def test_decision_is_stable(kwargs: dict[str, object]) -> None:
    """Applying a decision and deciding again starts and retires nothing more (no flapping)."""
    first = target_workers(**kwargs)  # type: ignore[arg-type]
    live = int(kwargs["live"]) + first.start - first.retire_idle  # type: ignore[call-overload]
    expired = max(0, int(kwargs["idle_expired"]) - first.retire_idle)  # type: ignore[call-overload]
    starting = int(kwargs["starting"]) + first.start  # type: ignore[call-overload]
    again = target_workers(
        **{**kwargs, "live": live, "starting": starting, "idle_expired": expired}
    )
    assert again.start == 0
    busy = int(kwargs["busy"])  # type: ignore[call-overload]
    assert again.retire_idle == 0 or live > again.cap or busy > again.cap


@given(_inputs())
def test_no_worker_starts_without_a_call_waiting_for_it(kwargs: dict[str, object]) -> None:
    """
    Workers started never exceed the queued calls that no idle or starting worker
    will take: a worker still starting counts against the calls waiting.
    """
    decision = target_workers(**kwargs)  # type: ignore[arg-type]
    live, busy, queued = int(kwargs["live"]), int(kwargs["busy"]), int(kwargs["queued"])  # type: ignore[call-overload]
    starting = int(kwargs["starting"])  # type: ignore[call-overload]
    idle = live - busy - starting
    assert decision.start <= max(0, queued - idle - starting)


@given(_inputs(), st.integers(0, 10))
def test_starts_stay_within_the_memory_headroom(kwargs: dict[str, object], room: int) -> None:
    """No more workers start than the headroom holds; without a bound the start is unchanged."""
    bounded = target_workers(**kwargs, startable=room)  # type: ignore[arg-type]
    free = target_workers(**kwargs)  # type: ignore[arg-type]
    assert bounded.start == min(free.start, room)
    assert bounded.target == free.target


def test_starting_workers_are_not_busy() -> None:
    """Three queued calls, three workers starting: nothing more starts (8 allowed)."""
    decision = target_workers(
        max_workers=8, queued=3, busy=0, starting=3, live=3, idle_expired=0, level=N
    )
    assert decision.start == 0
    assert decision.target == 3
