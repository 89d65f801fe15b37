"""Tests for the adaptive admission limiter and ``sup.admission`` (_admission/_limiter.py)."""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor import (
    AdmissionLimiter,
    AdmissionRejectedError,
    AdmissionSettings,
    OverloadedError,
    PressureLevel,
    Supervisor,
    SupervisorClosedError,
    SupervisorSettings,
)
from resource_supervisor._admission._cpu_stat import CpuStatReader
from resource_supervisor._admission._limit import LimitParams
from resource_supervisor._admission._limiter import serve_newest
from resource_supervisor._admission._pressure import PressureAdjustment
from resource_supervisor.testing import ManualClock, ScriptedSource
from tests.strategies import make_snapshot

from .test_admission_cpu_stat import _lay_out

if TYPE_CHECKING:
    from pathlib import Path


def limiter(limit: int = 2, *, queue: int = 2, clock: ManualClock | None = None, **kw: object):  # type: ignore[no-untyped-def]
    # min_limit = limit: the first window (a probe at min_limit) admits as many
    params = LimitParams(min_limit=limit, initial_limit=limit, max_limit=100, probe_interval=None)
    return AdmissionLimiter(
        params,
        queue_limit=queue,
        clock=clock if clock is not None else ManualClock(),
        **kw,  # type: ignore[arg-type]
    )


async def past_first_probe(limit: int, **kw: object) -> AdmissionLimiter:
    """A limiter with floor 1 at *limit*, its first window (the probe) done."""
    clock = ManualClock()
    lim = AdmissionLimiter(
        LimitParams(initial_limit=limit, probe_interval=None),
        window_samples=1,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )
    async with lim.slot():
        clock.advance(0.01)
    assert lim.limit == limit
    return lim


async def hold(lim: AdmissionLimiter, release: anyio.Event, started: list[int], i: int) -> None:
    async with lim.slot():
        started.append(i)
        await release.wait()


async def test_admits_up_to_the_limit_queues_then_refuses() -> None:
    """Up to `limit` blocks run, up to `queue_limit` wait, the next is refused at once."""
    lim = limiter(2, queue=1)
    release = anyio.Event()
    started: list[int] = []
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(hold, lim, release, started, i)
        await anyio.wait_all_tasks_blocked()
        stats = lim.statistics()
        assert (stats.in_flight, stats.queued, started) == (2, 1, [0, 1])
        with pytest.raises(AdmissionRejectedError) as caught:
            async with lim.slot():
                pytest.fail("admitted beyond the queue")
        error = caught.value
        assert isinstance(error, OverloadedError)
        assert (error.limit, error.in_flight, error.queued, error.queue_limit) == (2, 2, 1, 1)
        assert not error.timed_out
        assert error.retry_after >= 1.0
        release.set()
    assert started == [0, 1, 2]  # the queued one ran after a slot freed, FIFO
    stats = lim.statistics()
    assert (stats.in_flight, stats.queued, stats.admitted_total, stats.rejected_total) == (
        0,
        0,
        3,
        1,
    )


async def test_queue_timeout_refuses_a_caller_that_waited_too_long() -> None:
    """A caller still queued after queue_timeout is refused and counted as timed out."""
    lim = AdmissionLimiter(
        LimitParams(initial_limit=1, probe_interval=None), queue_limit=4, queue_timeout=0.01
    )
    release = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, lim, release, [], 0)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(AdmissionRejectedError) as caught:
                async with lim.slot():
                    pytest.fail("admitted past the queue timeout")
            assert caught.value.timed_out
            release.set()
    stats = lim.statistics()
    assert (stats.rejected_total, stats.timed_out_total, stats.queued) == (1, 1, 0)


async def test_auto_queue_timeout_follows_the_measured_minimum() -> None:
    """'auto' waits without bound until a minimum is measured, then 2 x tolerance x minimum."""
    clock = ManualClock()
    lim = AdmissionLimiter(
        LimitParams(initial_limit=1, probe_interval=None, tolerance=1.5),
        queue_limit=4,
        window_samples=1,
        clock=clock,
    )
    assert lim._max_wait() == math.inf
    async with lim.slot():
        clock.advance(0.2)
    assert lim.statistics().latency_min_seconds == pytest.approx(0.2)
    assert lim._max_wait() == pytest.approx(0.6)
    unbounded = AdmissionLimiter(queue_timeout=None)
    assert unbounded._max_wait() == math.inf


@given(
    wait=st.floats(0, 1e4, allow_nan=False),
    longer=st.floats(0, 1e4, allow_nan=False),
    bound=st.floats(1e-6, 1e4, allow_nan=False),
)
def test_serve_newest_is_lifo_past_half_the_bound_and_never_without_one(
    wait: float, longer: float, bound: float
) -> None:
    """LIFO exactly when the oldest waited over half the bound; monotone; FIFO if unbounded."""
    assert serve_newest(wait, bound) == (wait > bound / 2)
    if serve_newest(wait, bound):
        assert serve_newest(wait + longer, bound)
    assert not serve_newest(wait, math.inf)


async def test_queue_serves_newest_first_once_the_oldest_waited_half_the_bound() -> None:
    """FIFO while the queue drains in time; past half the wait bound the newest goes first."""
    clock = ManualClock()
    lim = AdmissionLimiter(
        LimitParams(min_limit=1, initial_limit=1, max_limit=1, probe_interval=None),
        queue_limit=4,
        queue_timeout=100.0,
        clock=clock,
    )
    order: list[int] = []
    releases = [anyio.Event() for _ in range(5)]

    async def call(i: int) -> None:
        async with lim.slot():
            order.append(i)
            await releases[i].wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(3):  # 0 runs, 1 and 2 wait
                tg.start_soon(call, i)
                await anyio.wait_all_tasks_blocked()
            releases[0].set()  # the oldest has waited 0 s: FIFO
            await anyio.wait_all_tasks_blocked()
            assert order == [0, 1]
            tg.start_soon(call, 3)
            tg.start_soon(call, 4)
            await anyio.wait_all_tasks_blocked()
            clock.advance(50.1)  # caller 2 has now waited over half of 100 s
            releases[1].set()
            await anyio.wait_all_tasks_blocked()
            assert order == [0, 1, 4]
            for event in releases:
                event.set()
    assert order == [0, 1, 4, 3, 2]
    assert lim.statistics().admitted_total == 5


async def test_queue_without_a_wait_bound_stays_fifo() -> None:
    """queue_timeout=None never turns LIFO, however long the oldest caller waited."""
    clock = ManualClock()
    lim = AdmissionLimiter(
        LimitParams(min_limit=1, initial_limit=1, max_limit=1, probe_interval=None),
        queue_limit=4,
        queue_timeout=None,
        clock=clock,
    )
    order: list[int] = []
    release = anyio.Event()

    async def call(i: int) -> None:
        async with lim.slot():
            order.append(i)
            clock.advance(1e6)
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(call, i)
                await anyio.wait_all_tasks_blocked()
            release.set()
    assert order == [0, 1, 2, 3]


async def test_cancelled_while_queued_leaves_the_queue_and_takes_no_slot() -> None:
    """A queued caller cancelled leaves the queue; the slot goes to the next caller."""
    lim = limiter(1, queue=2)
    release = anyio.Event()
    started: list[int] = []
    victim_scope = anyio.CancelScope()

    async def victim() -> None:
        with victim_scope:
            async with lim.slot():
                started.append(99)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, lim, release, started, 0)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(victim)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(hold, lim, release, started, 1)
        await anyio.wait_all_tasks_blocked()
        assert lim.statistics().queued == 2
        victim_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert lim.statistics().queued == 1
        release.set()
    assert started == [0, 1]
    stats = lim.statistics()
    assert (stats.in_flight, stats.admitted_total, stats.rejected_total) == (0, 2, 0)


async def test_cancelled_as_the_slot_arrives_hands_it_on() -> None:
    """A waiter granted a slot but cancelled before it resumes passes the slot on."""
    lim = limiter(1, queue=2)
    started: list[int] = []
    release = anyio.Event()
    victim_scope = anyio.CancelScope()

    async def victim() -> None:
        with victim_scope:
            async with lim.slot():
                started.append(1)

    async with anyio.create_task_group() as tg:
        async with lim.slot():
            tg.start_soon(victim)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(hold, lim, release, started, 2)
            await anyio.wait_all_tasks_blocked()
            victim_scope.cancel()  # delivered when the victim next runs ...
        # ... and leaving the block granted it the slot first
        assert lim.statistics().in_flight == 1
        await anyio.wait_all_tasks_blocked()
        assert started == [2]
        release.set()
    assert lim.statistics().in_flight == 0


async def test_a_cancelled_block_is_not_a_latency_sample() -> None:
    """Cancelled blocks release their slot but say nothing about latency."""
    clock = ManualClock()
    lim = limiter(4, clock=clock, window_samples=1)
    with anyio.CancelScope() as scope:
        async with lim.slot():
            clock.advance(5.0)
            scope.cancel()
            await anyio.sleep(1)
    assert lim.statistics().in_flight == 0
    assert math.isnan(lim.statistics().latency_short_seconds)

    async def failing() -> None:
        async with lim.slot():
            clock.advance(0.5)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await failing()
    assert lim.statistics().latency_short_seconds == pytest.approx(0.5)


async def test_limit_follows_latency() -> None:
    """Fast, fully used windows grow the limit; slower ones past tolerance shrink it."""
    clock = ManualClock()
    lim = limiter(4, clock=clock, window_samples=4)

    async def one(duration: float, gate: anyio.Event) -> None:
        async with lim.slot():
            await gate.wait()
            clock.advance(duration)

    async def window(duration: float) -> None:
        gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one, duration, gate)
            await anyio.wait_all_tasks_blocked()
            gate.set()

    assert lim.statistics().probing  # the first window measures the minimum
    await window(0.01)
    assert not lim.statistics().probing
    await window(0.01)
    assert lim._state.limit > 4
    for _ in range(10):
        await window(0.01)
    assert lim.limit > 4
    high = lim._state.limit
    await window(0.2)  # 0.05 s per call, five times the minimum
    assert lim._state.limit == pytest.approx(max(4, high / 2))  # cut at once, by half
    stats = lim.statistics()
    assert stats.latency_min_seconds == pytest.approx(0.01 * 2.5, rel=0.5)
    assert stats.latency_short_seconds > stats.latency_min_seconds
    assert not math.isnan(stats.latency_long_seconds)
    assert stats.drain_per_second > 0


async def test_pressure_adjustments_floor_hold_and_release() -> None:
    """CRITICAL drops to the floor and keeps it there; a clear sample lets it grow again."""
    clock = ManualClock()
    lim = AdmissionLimiter(
        LimitParams(initial_limit=20, probe_interval=None), window_samples=1, clock=clock
    )
    async with lim.slot():  # the first window: a probe at the floor
        clock.advance(0.01)
    assert lim.limit == 20
    lim.observe(make_snapshot(pressure_level=PressureLevel.CRITICAL), usable_cpus=2)
    assert lim.limit == 1
    assert lim.statistics().pressure_reasons == ("memory",)
    for _ in range(5):
        async with lim.slot():
            clock.advance(0.01)
    assert lim.limit == 1  # held at the floor while CRITICAL
    lim.observe(make_snapshot(pressure_level=PressureLevel.NORMAL), usable_cpus=2)
    assert lim.statistics().pressure_reasons == ()
    for _ in range(5):
        async with lim.slot():
            clock.advance(0.01)
    assert lim._state.limit > 1
    before = lim._state.limit
    lim.observe(make_snapshot(process_cpu_percent=195.0), usable_cpus=2)
    assert lim._state.limit == pytest.approx(max(1.0, before * 0.8))
    assert lim.statistics().pressure_reasons == ("cpu",)
    lim.observe(make_snapshot(process_queue_depth=8, process_workers_target=2), usable_cpus=2)
    assert lim.statistics().pressure_reasons == ("process_lane",)
    lim.adjust(PressureAdjustment())
    assert lim.statistics().pressure_reasons == ()
    lim.observe({"pressure_level": 2}, usable_cpus=2)  # a plain level, not a PressureLevel
    assert lim.limit == 1
    assert lim.statistics().pressure_reasons == ("memory",)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


async def test_throttling_read_from_cpu_stat_tightens(tmp_path: Path) -> None:
    """Throttled periods in the cgroup's cpu.stat between samples tighten the limit."""
    stat = "nr_periods 100\nnr_throttled 0\nthrottled_usec 0\n"
    proc, cgroup_root = _lay_out(tmp_path, "v2", stat)
    reader = CpuStatReader(proc_root=proc, cgroup_root=cgroup_root, pid=4242)
    lim = await past_first_probe(10, cpu_stat=reader)
    lim.open()
    try:
        lim.observe(make_snapshot(), usable_cpus=1)
        assert lim.limit == 10
        assert lim.metrics()["cgroup_cpu_throttled_ratio"] == 0.0
        assert reader.path is not None
        _write(reader.path, "nr_periods 200\nnr_throttled 30\nthrottled_usec 1500000\n")
        lim.observe(make_snapshot(), usable_cpus=1)
        assert lim.limit == 8
        assert lim.statistics().pressure_reasons == ("cpu_throttling",)
        metrics = lim.metrics()
        assert metrics["cgroup_cpu_throttled_ratio"] == pytest.approx(0.3)
        assert metrics["cgroup_cpu_throttled_seconds_total"] == pytest.approx(1.5)
    finally:
        lim.close()


async def test_close_wakes_waiters_and_refuses_new_callers() -> None:
    """After close, queued and new callers get SupervisorClosedError; running blocks finish."""
    lim = limiter(1, queue=1)
    release = anyio.Event()
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            async with lim.slot():
                pytest.fail("admitted after close")
        except SupervisorClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, lim, release, [], 0)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        lim.close()
        await anyio.wait_all_tasks_blocked()
        assert len(errors) == 1
        with pytest.raises(SupervisorClosedError):
            async with lim.slot():
                pass
        release.set()
    assert lim.statistics().in_flight == 0


def test_retry_after_follows_the_drain_rate() -> None:
    """Retry-After: backlog / drain rate, within [1, 60]; 1 before any completion."""
    lim = limiter(1)
    assert lim.retry_after() == 1.0
    lim._drain = 0.5  # one completion every two seconds
    assert lim.retry_after() == pytest.approx(2.0)
    lim._drain = 0.001
    assert lim.retry_after() == 60.0


def test_rejection_error_pickles_and_names_the_facts() -> None:
    """The error survives pickle with its attributes and says why it refused."""
    error = AdmissionRejectedError(4, 4, 8, 8, 2.5, True)
    again = pickle.loads(pickle.dumps(error))
    assert vars(again) == vars(error)
    assert str(again) == str(error)
    assert "waited past the queue timeout" in str(error)
    assert "the queue is full" in str(AdmissionRejectedError(4, 4, 8, 8, 2.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queue_limit": -1}, "queue_limit"),
        ({"window_samples": 0}, "window_samples"),
        ({"queue_timeout": 0.0}, "queue_timeout"),
        ({"queue_timeout": "soon"}, "queue_timeout"),
    ],
)
def test_limiter_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    """Bad arguments are refused with the name of the argument."""
    with pytest.raises(ValueError, match=match):
        AdmissionLimiter(**kwargs)  # type: ignore[arg-type]


async def test_supervisor_admission_in_snapshot_and_prometheus() -> None:
    """
    sup.admission is the limiter; each snapshot carries its figures (and Prometheus
    exports them), and CRITICAL memory pressure drops its limit to the floor.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from resource_supervisor.integrations.prometheus import register

    source = ScriptedSource()
    settings = SupervisorSettings(
        monitoring_enabled=False, admission=AdmissionSettings(window_samples=1)
    )
    async with Supervisor(settings, source=source) as sup:
        assert sup.admission.limit == settings.admission.min_limit  # probing first
        async with sup.admission.slot():
            snap = await sup.update_metrics()
            assert snap["admission_in_flight"] == 1
        assert sup.admission.limit == settings.admission.initial_limit
        snap = await sup.update_metrics()
        assert snap["admission_limit"] == settings.admission.initial_limit
        assert snap["admission_latency_min_seconds"] > 0
        for key in (
            "admission_queued",
            "admission_rejected_total",
            "admission_latency_short_seconds",
            "admission_latency_long_seconds",
        ):
            assert key in snap
        source.set(memory_percent=99.0)
        snap = await sup.update_metrics()
        assert snap.pressure_level is PressureLevel.CRITICAL
        assert sup.admission.limit == settings.admission.min_limit
        registry = CollectorRegistry()
        register(sup, registry)
        text = generate_latest(registry).decode()
        assert f"resource_supervisor_admission_limit {settings.admission.min_limit}.0" in text
        assert "resource_supervisor_admission_rejected_total 0.0" in text
        assert "resource_supervisor_admission_in_flight 0.0" in text
        assert "resource_supervisor_admission_latency_short_seconds" in text
    with pytest.raises(SupervisorClosedError):
        async with sup.admission.slot():
            pass
