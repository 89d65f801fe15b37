"""
Tests of the concurrent.futures executors over the lanes (broker._std_executors):
real lanes, real threads and worker processes. CPython's own conformance cases run
in tests/broker/test_std_executor_conformance.py where the interpreter ships them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import operator
import threading
import time
import weakref
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from resource_supervisor import Supervisor
from resource_supervisor._config import ConcurrencySettings, build_settings
from resource_supervisor._exceptions import (
    OverloadedError,
    SupervisorClosedError,
    UnpicklableError,
    WorkerCrashedError,
)
from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker import Executors
from resource_supervisor.broker._threads import THREAD_NAME
from tests import _workers

if TYPE_CHECKING:
    from collections.abc import Callable

GUARD = 30.0  # seconds; a hang guard only


def lane_int(executors: Executors, key: str) -> int:
    """A numeric metric of the lanes, e.g. ``thread_lane_queued``."""
    value = executors.metrics()[key]
    assert isinstance(value, int | float)
    return int(value)


def make_executors(cpu: int = 1, io: int = 2, **settings: object) -> Executors:
    return Executors(ConcurrencySettings.model_validate(settings), cpu_workers=cpu, io_workers=io)


class _Dummy:
    """A result that can be weakly referenced."""


def thread_name() -> str:
    return threading.current_thread().name


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll *predicate*: the state lives in lane threads (callers bound it with a guard)."""
    while not predicate():  # noqa: ASYNC110 - the state lives in other threads
        await asyncio.sleep(0.005)


async def test_submit_from_the_loop_thread_never_blocks_and_refuses_a_blocking_wait() -> None:
    """In the loop's thread submit only schedules: awaiting the wrapped future works, a
    blocking result() or shutdown(wait=True) raises at once instead of deadlocking, and
    ashutdown() waits."""
    async with make_executors() as executors:
        executor = executors.thread_executor()
        release = threading.Event()
        future = executor.submit(release.wait, GUARD)
        with pytest.raises(RuntimeError, match="block the event loop's own thread"):
            future.result()
        with pytest.raises(RuntimeError, match="block the event loop's own thread"):
            future.exception()
        with pytest.raises(RuntimeError, match="shutdown"):
            executor.shutdown(wait=True)
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            executor.submit(abs, -1)
        release.set()
        with anyio.fail_after(GUARD):
            assert await asyncio.wrap_future(future) is True
            await executor.ashutdown()
        assert future.result() is True  # done: a non-blocking read is fine here
        executor.shutdown(wait=True)  # nothing outstanding: returns at once


async def test_calls_run_in_the_lane_and_count_in_its_metrics() -> None:
    """A thread executor starts no thread of its own: calls run on lane threads and are
    counted by the lane; keyword arguments all go to the function."""
    async with make_executors(io=2) as executors:
        async with executors.thread_executor() as executor:
            names = [executor.submit(thread_name) for _ in range(4)]
            keyword = executor.submit(int, "ff", base=16)
            with anyio.fail_after(GUARD):
                assert {await asyncio.wrap_future(f) for f in names} == {THREAD_NAME}
                assert await asyncio.wrap_future(keyword) == 255
        assert executors.metrics()["thread_lane_completed_total"] == 5
        assert executors.metrics()["thread_lane_capacity"] == 2


async def test_usable_from_any_other_thread() -> None:
    """From a plain thread (not the loop's, not a lane thread) submit, result, map,
    wait and as_completed behave as with a ThreadPoolExecutor."""
    async with make_executors(io=3) as executors:
        executor = executors.thread_executor(max_workers=2)

        def drive() -> tuple[list[int], int, set[int], str]:
            squares = list(executor.map(operator.mul, range(6), range(6)))
            added = executor.submit(operator.add, 2, 3).result(timeout=GUARD)
            fs = [executor.submit(abs, -i) for i in range(5)]
            concurrent.futures.wait(fs, timeout=GUARD)
            done = {f.result() for f in concurrent.futures.as_completed(fs, timeout=GUARD)}
            failing = executor.submit(operator.truediv, 1, 0)
            error = type(failing.exception(timeout=GUARD)).__name__
            executor.shutdown(wait=True)
            return squares, added, done, error

        with anyio.fail_after(GUARD):
            squares, added, done, error = await anyio.to_thread.run_sync(drive)
    assert squares == [i * i for i in range(6)]
    assert added == 5
    assert done == set(range(5))
    assert error == "ZeroDivisionError"


async def test_max_workers_bounds_the_calls_in_the_lane_at_once() -> None:
    """At most max_workers calls of one executor run at once, even in a bigger lane."""
    async with make_executors(io=6) as executors:
        executor = executors.thread_executor(max_workers=2)
        lock = threading.Lock()
        running = peak = 0

        def tracked() -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.02)
            with lock:
                running -= 1

        with anyio.fail_after(GUARD):
            await asyncio.gather(*(asyncio.wrap_future(executor.submit(tracked)) for _ in range(8)))
        assert peak == 2
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            executors.thread_executor(max_workers=0)
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            executors.process_executor(max_workers=0)


async def test_cancelled_future_is_withdrawn_from_the_lane_queue() -> None:
    """Cancelling a future whose call waits in the lane removes the call: it never runs
    and the lane's queue empties; a running call's future cannot be cancelled."""
    async with make_executors(io=1) as executors:
        executor = executors.thread_executor(max_workers=2)  # so the second call is in the lane
        release = threading.Event()
        ran: list[str] = []
        blocker = executor.submit(release.wait, GUARD)
        queued = executor.submit(ran.append, "queued")
        with anyio.fail_after(GUARD):
            await wait_until(
                lambda: lane_int(executors, "thread_lane_queued") == 1 and blocker.running()
            )
            assert queued.cancel()
            assert not blocker.cancel()
            await wait_until(lambda: lane_int(executors, "thread_lane_queued") == 0)
            release.set()
            await asyncio.wrap_future(blocker)
        assert ran == []
        assert queued.cancelled()


async def test_shutdown_cancel_futures_cancels_only_what_has_not_started() -> None:
    """shutdown(wait=False, cancel_futures=True): the running call finishes, the others
    are cancelled and never run; the lane stays usable."""
    async with make_executors(io=1) as executors:
        executor = executors.thread_executor(max_workers=1)
        release = threading.Event()
        ran: list[int] = []
        first = executor.submit(release.wait, GUARD)
        rest = [executor.submit(ran.append, i) for i in range(5)]
        with anyio.fail_after(GUARD):
            await wait_until(first.running)
            executor.shutdown(wait=False, cancel_futures=True)
            release.set()
            assert await asyncio.wrap_future(first) is True
            assert all(f.cancelled() for f in rest)
            done, _ = await asyncio.to_thread(concurrent.futures.wait, rest, GUARD)
            assert done == set(rest)  # cancelled futures count as done for waiters
            assert await executors.run_in_thread(abs, -4) == 4
        assert ran == []


async def test_process_calls_within_max_workers_are_running_from_submit() -> None:
    """As ProcessPoolExecutor: a process call that got one of the executor's slots is
    RUNNING as soon as ``submit`` returns, before the loop has run at all, so
    ``shutdown(cancel_futures=True)`` right after the submits cancels only the rest and
    the admitted calls finish (CPython's test_cancel_futures relies on this)."""
    async with make_executors(cpu=2) as executors:
        executor = executors.process_executor(max_workers=2)
        # The loop's own thread: nothing scheduled here can run before shutdown.
        futures = [executor.submit(operator.neg, i) for i in range(10)]
        assert [f.running() for f in futures] == [True, True] + [False] * 8
        executor.shutdown(wait=False, cancel_futures=True)
        assert [f.cancelled() for f in futures] == [False, False] + [True] * 8
        with anyio.fail_after(GUARD):
            await executor.ashutdown()
        assert [f.result() for f in futures[:2]] == [0, -1]


async def test_a_slot_freed_by_a_finished_call_goes_to_the_next_waiting_one() -> None:
    """With more calls than slots, each finished call hands its slot on in submission
    order, skipping cancelled ones, until all have run."""
    async with make_executors(cpu=2) as executors:
        executor = executors.process_executor(max_workers=2)
        futures = [executor.submit(operator.neg, i) for i in range(12)]
        for future in futures[4:8]:
            assert future.cancel()
        with anyio.fail_after(GUARD):
            await executor.ashutdown()
        ran = futures[:4] + futures[8:]
        assert [f.result() for f in ran] == [-i for i in (*range(4), *range(8, 12))]
        assert all(f.cancelled() for f in futures[4:8])


async def test_thread_shutdown_cancel_futures_spares_the_calls_holding_a_slot() -> None:
    """A thread call moves to RUNNING in the lane thread, but one holding a slot is
    already in the lane: shutdown(cancel_futures=True) right after the submits cancels
    only the calls waiting for a slot, even before the loop has run."""
    async with make_executors(io=2) as executors:
        executor = executors.thread_executor(max_workers=2)
        futures = [executor.submit(operator.neg, i) for i in range(10)]
        assert not any(f.running() for f in futures)  # the loop has not run yet
        executor.shutdown(wait=False, cancel_futures=True)
        assert [f.cancelled() for f in futures] == [False, False] + [True] * 8
        with anyio.fail_after(GUARD):
            await executor.ashutdown()
        assert [f.result() for f in futures[:2]] == [0, -1]


async def test_a_thread_call_holds_no_reference_to_its_result_once_settled() -> None:
    """Once a call's future is settled, only the future holds the result: a caller
    (here another thread, as in CPython's test_free_reference) that drops the future
    frees the result."""
    async with make_executors(io=2) as executors:
        executor = executors.thread_executor(max_workers=2)

        def freed() -> list[bool]:
            outcomes = []
            for _ in range(20):
                future = executor.submit(_Dummy)
                ref = weakref.ref(future.result(GUARD))
                del future
                gc.collect()
                outcomes.append(ref() is None)
            return outcomes

        with anyio.fail_after(GUARD):
            assert await asyncio.to_thread(freed) == [True] * 20


async def test_map_timeout_raises_and_cancels_the_rest() -> None:
    """map(timeout=) raises TimeoutError for a result not ready in time and cancels
    the calls that have not started."""
    async with make_executors(io=1) as executors:
        executor = executors.thread_executor(max_workers=1)
        release = threading.Event()

        def drive() -> list[object]:
            got: list[object] = []
            results = executor.map(lambda x: x or release.wait(GUARD), [1, 0, 2], timeout=0.2)
            with pytest.raises(concurrent.futures.TimeoutError):
                got.extend(results)
            return got

        with anyio.fail_after(GUARD):
            got = await anyio.to_thread.run_sync(drive)
            release.set()
            executor.shutdown(wait=False)
        assert got == [1]


async def test_process_executor_crash_fails_only_its_future() -> None:
    """A worker that dies fails only the future of its call (WorkerCrashedError); the
    other calls and later ones succeed; an unpicklable call fails its future."""
    async with make_executors(cpu=2) as executors, executors.process_executor() as executor:
        crash = executor.submit(_workers.exit_now, 3)
        fine = [executor.submit(_workers.square, i) for i in range(4)]
        lam = executor.submit(lambda: 1)
        with anyio.fail_after(GUARD):
            with pytest.raises(WorkerCrashedError):
                await asyncio.wrap_future(crash)
            assert [await asyncio.wrap_future(f) for f in fine] == [0, 1, 4, 9]
            with pytest.raises(UnpicklableError):
                await asyncio.wrap_future(lam)
            assert await asyncio.wrap_future(executor.submit(_workers.add, 2, b=3)) == 5


async def test_process_executor_admission_at_critical() -> None:
    """At CRITICAL with the queue limit reached, the future fails with OverloadedError."""
    async with make_executors(queue_limit=0) as executors:
        executor = executors.process_executor()
        assert repr(executor) == "<LaneProcessExecutor max_workers=1 shutdown=False>"
        with anyio.fail_after(GUARD):
            assert await asyncio.wrap_future(executor.submit(abs, -1)) == 1
            executors.set_pressure(PressureLevel.CRITICAL)
            with pytest.raises(OverloadedError):
                await asyncio.wrap_future(executor.submit(abs, -2))
            executors.set_pressure(PressureLevel.NORMAL)
            assert await asyncio.wrap_future(executor.submit(abs, -3)) == 3
            await executor.ashutdown()


async def test_process_map_sends_chunksize_items_per_call() -> None:
    """map(chunksize=4) over 10 items makes 3 lane calls and yields every result in order."""
    async with make_executors(cpu=2) as executors:
        executor = executors.process_executor()

        def drive() -> list[int]:
            return list(executor.map(operator.mul, range(10), range(10), chunksize=4))

        with anyio.fail_after(GUARD):
            before = lane_int(executors, "process_completed_total")
            assert await anyio.to_thread.run_sync(drive) == [i * i for i in range(10)]
            assert lane_int(executors, "process_completed_total") - before == 3
            with pytest.raises(ValueError, match="chunksize"):
                executor.map(abs, [1], chunksize=0)
            await anyio.to_thread.run_sync(executor.shutdown)  # wait=True, off the loop


async def test_exit_shuts_executors_down_and_fails_calls_not_run() -> None:
    """Closing the executors shuts every standard executor down (submit raises
    RuntimeError), fails calls still queued with SupervisorClosedError, and lets the
    running call finish."""
    executors = make_executors(io=1)
    async with executors:
        executor = executors.thread_executor(max_workers=2)
        release = threading.Event()
        running = executor.submit(release.wait, GUARD)
        queued = executor.submit(abs, -1)
        queued.add_done_callback(lambda _: release.set())  # failed by the close
        with anyio.fail_after(GUARD):
            await wait_until(lambda: lane_int(executors, "thread_lane_queued") == 1)
    assert isinstance(queued.exception(timeout=0), SupervisorClosedError)
    assert running.result(timeout=0) is True
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(abs, -1)
    with pytest.raises(SupervisorClosedError):
        executors.thread_executor()


async def test_set_default_executor_routes_to_thread_and_restores_the_previous() -> None:
    """One call makes the lane the loop's default executor (asyncio.to_thread and
    run_in_executor(None) run on lane threads); the supervisor's exit restores the
    executor that was the default before."""
    loop = asyncio.get_running_loop()
    previous = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine")
    loop.set_default_executor(previous)
    try:
        settings = build_settings(
            monitoring_enabled=False,
            concurrency={"default_cpu_workers": 1, "default_io_workers": 2},
        )
        async with Supervisor(settings) as sup:
            installed = sup.executors.set_default_executor()
            assert sup.executors.set_default_executor() is installed
            assert isinstance(installed, concurrent.futures.ThreadPoolExecutor)
            with anyio.fail_after(GUARD):
                assert await asyncio.to_thread(thread_name) == THREAD_NAME
                assert await loop.run_in_executor(None, thread_name) == THREAD_NAME
        with anyio.fail_after(GUARD):
            assert (await loop.run_in_executor(None, thread_name)).startswith("mine")
    finally:
        await anyio.to_thread.run_sync(functools.partial(previous.shutdown, wait=True))


async def test_default_executor_without_a_previous_one_falls_back_to_asyncio_s() -> None:
    """Without a previous default, after exit run_in_executor(None) runs on a plain
    ThreadPoolExecutor again, never on the closed lane."""
    loop = asyncio.get_running_loop()
    async with make_executors() as executors:
        executors.set_default_executor(max_workers=1)
        with anyio.fail_after(GUARD):
            assert await asyncio.to_thread(thread_name) == THREAD_NAME
    with anyio.fail_after(GUARD):
        name = await loop.run_in_executor(None, thread_name)
    assert name.startswith("asyncio")


async def test_cancel_from_another_thread_and_ashutdown_waits_for_the_rest() -> None:
    """A future cancelled from a plain thread withdraws its call through the loop;
    ashutdown() waits, without blocking the loop, for the calls still outstanding."""
    async with make_executors(io=1) as executors:
        executor = executors.thread_executor(max_workers=1)
        release = threading.Event()
        ran: list[int] = []
        first = executor.submit(release.wait, GUARD)
        waiting = executor.submit(ran.append, 1)  # waits for the executor's one slot
        with anyio.fail_after(GUARD):
            await wait_until(first.running)
            assert await anyio.to_thread.run_sync(waiting.cancel)
            later = executor.submit(ran.append, 2)
            shutting = asyncio.ensure_future(executor.ashutdown())
            await asyncio.sleep(0.05)
            assert not shutting.done()  # the blocker still runs
            assert "shutdown=True" in repr(executor)
            release.set()
            await shutting
        assert later.done()
        assert ran == [2]


async def test_set_default_executor_only_in_its_loop_and_leaves_a_later_replacement() -> None:
    """set_default_executor() refuses another loop's thread; if the application
    replaced the default meanwhile, exit leaves the application's in place."""
    loop = asyncio.get_running_loop()
    theirs = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="theirs")
    try:
        async with make_executors() as executors:

            def elsewhere() -> None:
                async def attempt() -> None:
                    executors.set_default_executor()

                asyncio.run(attempt())

            with pytest.raises(RuntimeError, match="supervisor's loop"):
                await anyio.to_thread.run_sync(elsewhere)
            executors.set_default_executor()
            loop.set_default_executor(theirs)
        with anyio.fail_after(GUARD):
            assert (await loop.run_in_executor(None, thread_name)).startswith("theirs")
    finally:
        await anyio.to_thread.run_sync(functools.partial(theirs.shutdown, wait=True))


async def test_lane_figures_are_final_when_shutdown_returns() -> None:
    """A call's future is settled in the lane's thread a moment before the lane counts
    it on the loop: ``ashutdown`` (and leaving ``async with``) waits for both, so the
    lane's completed count is exact as soon as it returns, round after round."""
    async with make_executors(io=2) as executors:
        total = 0
        for _ in range(30):
            async with executors.thread_executor() as executor:
                futures = [executor.submit(operator.add, i, 1) for i in range(8)]
                with anyio.fail_after(GUARD):
                    for future in futures:
                        await asyncio.wrap_future(future)
            total += len(futures)
            assert executors.metrics()["thread_lane_completed_total"] == total
