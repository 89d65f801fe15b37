"""The admission queue's order and wait bound (_admission/_queue_order.py), pure and applied."""

from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor import AdmissionLimiter, AdmissionRejectedError
from resource_supervisor._admission._limit import LimitParams
from resource_supervisor._admission._queue_order import (
    LIFO_AFTER_REFERENCE,
    STANDING_WAIT_REFERENCE,
    lifo_after,
    serve_newest,
    wait_bound,
)
from resource_supervisor.testing import ManualClock

seconds = st.floats(0, 1e4, allow_nan=False)
positive = st.floats(1e-6, 1e4, allow_nan=False)


@given(wait=seconds, bound=positive, reference=positive)
def test_lifo_after_a_fraction_of_the_reference_never_later_than_half_the_bound(
    wait: float, bound: float, reference: float
) -> None:
    after = lifo_after(bound, reference)
    assert after == min(bound / 2, LIFO_AFTER_REFERENCE * reference)
    assert serve_newest(wait, bound, reference) == (wait > after)
    assert not serve_newest(wait, math.inf, reference)  # no bound: always FIFO
    assert lifo_after(bound, math.nan) == bound / 2  # no reference yet


@given(bound=positive, standing=seconds, reference=positive)
def test_a_standing_queue_serves_only_within_a_fraction_of_the_reference(
    bound: float, standing: float, reference: float
) -> None:
    allowed = wait_bound(bound, standing, reference)
    assert 0 < allowed <= bound
    if standing <= bound:
        assert allowed == bound  # a burst may use the whole bound
    else:
        assert allowed == min(bound, STANDING_WAIT_REFERENCE * reference)
    assert wait_bound(bound, math.nan, reference) == bound  # no queue
    assert wait_bound(bound, standing, math.nan) == bound  # no reference yet
    assert wait_bound(math.inf, standing, reference) == math.inf


async def _measured(clock: ManualClock, latency: float) -> AdmissionLimiter:
    """Limit 1, wait bound 1 s, reference *latency* (the first window's probe)."""
    lim = AdmissionLimiter(
        LimitParams(min_limit=1, initial_limit=1, max_limit=1, probe_interval=None),
        queue_limit=8,
        queue_timeout=1.0,
        window_samples=1,
        clock=clock,
    )
    async with lim.slot():
        clock.advance(latency)
    assert lim.statistics().latency_min_seconds == pytest.approx(latency)
    return lim


async def test_standing_queue_refuses_stale_callers_instead_of_serving_them_late() -> None:
    """Queued past the bound without a break: the stale callers are refused, not run."""
    clock = ManualClock()
    lim = await _measured(clock, 0.2)  # standing bound: 0.5 x 0.2 s = 0.1 s
    ran: list[str] = []
    refused: list[str] = []
    release = {name: anyio.Event() for name in "ABCD"}

    async def call(name: str) -> None:
        try:
            async with lim.slot():
                ran.append(name)
                await release[name].wait()
        except AdmissionRejectedError as exc:
            refused.append(name if exc.timed_out else f"{name} (queue full)")

    async def arrive(name: str) -> None:
        tg.start_soon(call, name)
        await anyio.wait_all_tasks_blocked()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await arrive("A")  # runs
            await arrive("B")
            clock.advance(0.6)
            await arrive("C")
            clock.advance(0.6)  # the queue has stood 1.2 s, longer than the 1 s bound:
            # B waited past the bound itself, C (0.6 s) past the standing bound (0.1 s)
            await arrive("D")
            await anyio.wait_all_tasks_blocked()
            release["A"].set()
            await anyio.wait_all_tasks_blocked()
            assert ran == ["A", "D"]
            assert sorted(refused) == ["B", "C"]
            release["D"].set()
    stats = lim.statistics()
    assert (stats.queued, stats.in_flight, stats.timed_out_total) == (0, 0, 2)


async def test_a_burst_that_drains_within_the_bound_keeps_its_callers() -> None:
    """Queued for less than the bound: served late rather than refused."""
    clock = ManualClock()
    lim = await _measured(clock, 0.2)
    ran: list[str] = []
    release = {name: anyio.Event() for name in "AB"}

    async def call(name: str) -> None:
        async with lim.slot():
            ran.append(name)
            await release[name].wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in "AB":
                tg.start_soon(call, name)
                await anyio.wait_all_tasks_blocked()
            clock.advance(0.5)  # B waited 0.5 s > 0.1 s, but the queue stood only 0.5 s
            release["A"].set()
            await anyio.wait_all_tasks_blocked()
            assert ran == ["A", "B"]
            release["B"].set()
    assert lim.statistics().rejected_total == 0


async def test_the_queue_stands_anew_after_it_emptied() -> None:
    """A queue that emptied starts a new standing period: its next burst gets the whole bound."""
    clock = ManualClock()
    lim = await _measured(clock, 0.2)
    ran: list[str] = []
    release = {name: anyio.Event() for name in "ABCD"}

    async def call(name: str) -> None:
        async with lim.slot():
            ran.append(name)
            await release[name].wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in "AB":
                tg.start_soon(call, name)
                await anyio.wait_all_tasks_blocked()
            clock.advance(0.6)
            release["A"].set()  # B runs: the queue is empty again
            await anyio.wait_all_tasks_blocked()
            clock.advance(0.6)  # 1.2 s since the first burst began
            tg.start_soon(call, "C")
            await anyio.wait_all_tasks_blocked()
            clock.advance(0.5)
            release["B"].set()  # C waited 0.5 s in a queue standing for 0.5 s: served
            await anyio.wait_all_tasks_blocked()
            assert ran == ["A", "B", "C"]
            release["C"].set()
    assert lim.statistics().rejected_total == 0
