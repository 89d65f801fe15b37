"""Tests of the executor facade (resource_supervisor.broker._executors), real lanes only."""

from __future__ import annotations

import functools
import math
import operator
import threading

import anyio
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._config import ConcurrencySettings
from resource_supervisor._exceptions import OverloadedError, SupervisorClosedError
from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker import Executors, split_worker_budget
from resource_supervisor.broker._threads import THREAD_NAME
from tests._loop_guard import blocking_setup

GUARD = 30.0  # seconds; a hang guard only (worker processes start slowly on 2 cores)

counts = st.integers(min_value=1, max_value=500)


def make_executors(cpu: int = 1, io: int = 2, **settings: object) -> Executors:
    return Executors(ConcurrencySettings.model_validate(settings), cpu_workers=cpu, io_workers=io)


def sleep_then_return(seconds: float, value: int) -> int:
    """Module-level (picklable) work for a worker process."""
    threading.Event().wait(seconds)
    return value


# -- split_worker_budget (pure) ---------------------------------------------------
@given(cpu=counts, io=counts, cap=st.none() | counts)
def test_split_keeps_at_least_one_each_and_never_grows(cpu: int, io: int, cap: int | None) -> None:
    """Each lane keeps at least one worker and never gets more than it asked for."""
    new_cpu, new_io = split_worker_budget(cpu, io, cap)
    assert 1 <= new_cpu <= cpu
    assert 1 <= new_io <= io


@given(cpu=counts, io=counts, cap=counts)
def test_split_fits_the_cap(cpu: int, io: int, cap: int) -> None:
    """Over the cap both shrink to use exactly the cap (or 1 + 1 when the cap is 1)."""
    new_cpu, new_io = split_worker_budget(cpu, io, cap)
    if cpu + io <= cap:
        assert (new_cpu, new_io) == (cpu, io)
    else:
        assert new_cpu + new_io == max(cap, 2)


@given(cpu=counts, io=counts, cap=counts)
def test_split_is_proportional(cpu: int, io: int, cap: int) -> None:
    """Scaling keeps the shares' order: the lane that asked for more never ends with less (+-1)."""
    new_cpu, new_io = split_worker_budget(cpu, io, cap)
    if cpu >= io:
        assert new_cpu + 1 >= new_io
    if io >= cpu:
        assert new_io + 1 >= new_cpu


def test_split_examples_and_errors() -> None:
    """Worked examples, and counts below 1 are rejected."""
    assert split_worker_budget(4, 12, None) == (4, 12)
    assert split_worker_budget(4, 12, 8) == (2, 6)
    assert split_worker_budget(2, 6, 8) == (2, 6)
    assert split_worker_budget(10, 1, 4) == (3, 1)
    with pytest.raises(ValueError, match="at least 1"):
        split_worker_budget(0, 1, None)
    with pytest.raises(ValueError, match="at least 1"):
        split_worker_budget(3, 3, 0)


def test_executors_apply_max_total_workers() -> None:
    """The facade sizes its lanes from the capped split, before any lane starts."""
    executors = make_executors(cpu=4, io=12, max_total_workers=8)
    assert (executors.cpu_workers, executors.io_workers) == (2, 6)
    assert executors.metrics()["thread_lane_capacity"] == 6


# -- thread lane through the facade ----------------------------------------------
async def test_run_in_thread_round_trip() -> None:
    """run_in_thread returns fn(*args), keywords go through functools.partial, errors propagate."""
    async with make_executors() as executors:
        assert await executors.run_in_thread(operator.add, 2, 3) == 5
        assert await executors.run_in_thread(functools.partial(int, base=2), "101") == 5
        with pytest.raises(ZeroDivisionError):
            await executors.run_in_thread(operator.truediv, 1, 0)
        metrics = executors.metrics()
    assert metrics["thread_lane_completed_total"] == 2
    assert metrics["thread_lane_failed_total"] == 1


async def test_run_in_thread_abandon_on_cancel_is_forwarded() -> None:
    """abandon_on_cancel=True reaches the lane: a cancelled caller leaves the call running."""
    gate = threading.Event()
    started = threading.Event()

    def blocked() -> None:
        started.set()
        gate.wait(GUARD)

    async with make_executors() as executors:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(executors.run_in_thread, blocked, abandon_on_cancel=True)
                )
                with anyio.fail_after(GUARD):
                    while not started.is_set():  # noqa: ASYNC110 - a thread-side flag
                        await anyio.sleep(0.002)
                scope.cancel()
        assert executors.metrics()["thread_lane_busy"] == 1
        gate.set()


# -- process lane through the facade ---------------------------------------------
async def test_run_in_process_round_trip() -> None:
    """run_in_process runs a picklable call in a worker process and returns its result."""
    async with make_executors() as executors:
        with anyio.fail_after(GUARD):
            assert await executors.run_in_process(math.factorial, 10) == 3628800
            assert await executors.run_in_process(sleep_then_return, 0.0, 7, timeout=GUARD) == 7


async def test_map_in_processes_yields_in_order() -> None:
    """map_in_processes maps over the items in worker processes, in input order by default."""
    async with make_executors(cpu=2) as executors:
        with anyio.fail_after(GUARD):
            results = [r async for r in executors.map_in_processes(abs, range(-20, 0))]
    assert results == list(range(20, 0, -1))


async def test_set_pressure_reaches_the_process_lane() -> None:
    """set_pressure is forwarded: at CRITICAL with queue_limit=0 the process lane refuses calls."""
    async with make_executors(queue_limit=0) as executors:
        with anyio.fail_after(GUARD):
            assert await executors.run_in_process(abs, -1) == 1
            executors.set_pressure(PressureLevel.CRITICAL)
            with pytest.raises(OverloadedError):
                await executors.run_in_process(abs, -2)
            executors.set_pressure(PressureLevel.NORMAL)
            assert await executors.run_in_process(abs, -3) == 3


async def test_pressure_set_before_entry_is_handed_over() -> None:
    """A level set before the lanes start applies once they do."""
    executors = make_executors(queue_limit=0)
    executors.set_pressure(PressureLevel.CRITICAL)
    async with executors:
        with pytest.raises(OverloadedError):
            await executors.run_in_process(abs, -1)
        assert executors.metrics()["process_refused_total"] == 1


async def test_metrics_merge_both_lanes() -> None:
    """metrics() merges the thread lane's thread_lane_* and the process lane's process_* keys."""
    async with make_executors() as executors:
        await executors.run_in_process(abs, -1)
        metrics = executors.metrics()
    thread_keys = {
        "thread_lane_busy",
        "thread_lane_capacity",
        "thread_lane_queued",
        "thread_lane_threads",
        "thread_lane_completed_total",
        "thread_lane_failed_total",
    }
    assert thread_keys <= metrics.keys()
    assert any(key.startswith("process_") for key in metrics)


# -- lifecycle ------------------------------------------------------------------
async def test_calls_outside_the_context_raise_closed() -> None:
    """Before entry and after aclose() calls raise SupervisorClosedError; aclose is idempotent."""
    executors = make_executors()
    with pytest.raises(SupervisorClosedError):
        await executors.run_in_thread(abs, 1)
    async with executors:
        assert await executors.run_in_thread(abs, -1) == 1
        await executors.aclose()
        await executors.aclose()
        with pytest.raises(SupervisorClosedError):
            await executors.run_in_thread(abs, 1)
        with pytest.raises(SupervisorClosedError):
            await executors.run_in_process(abs, 1)
        with pytest.raises(SupervisorClosedError):
            executors.map_in_processes(abs, [1])
    await executors.aclose()
    with pytest.raises(RuntimeError):
        await executors.__aenter__()


@blocking_setup("lists child processes through psutil")
def lane_children(process: psutil.Process) -> list[int]:
    """Child PIDs, without multiprocessing's per-interpreter resource tracker."""
    return [
        child.pid
        for child in process.children(recursive=True)
        if "resource_tracker" not in " ".join(child.cmdline())
    ]


@blocking_setup("lists child processes through psutil")
async def test_nothing_outlives_the_executors() -> None:
    """After exit no lane thread and no worker process (or lane forkserver) is left."""
    me = psutil.Process()
    before = set(lane_children(me))
    async with make_executors(cpu=2) as executors:
        await executors.run_in_thread(abs, -1)
        await executors.run_in_process(abs, -1)
        assert any(t.name == THREAD_NAME for t in threading.enumerate())
        assert set(lane_children(me)) - before
    assert [t.name for t in threading.enumerate() if t.name == THREAD_NAME] == []
    assert set(lane_children(me)) - before == set()
