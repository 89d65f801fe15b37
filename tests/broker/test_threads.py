"""Tests of the thread lane (resource_supervisor.broker._threads) with real threads."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import traceback
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from resource_supervisor._exceptions import SupervisorClosedError
from resource_supervisor.broker._thread_stats import thread_lane_metrics
from resource_supervisor.broker._threads import THREAD_NAME, ThreadLane, ThreadLaneStatistics

if TYPE_CHECKING:
    from collections.abc import Callable

GUARD = 10.0  # seconds; a hang guard only, never a timing assertion

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll *predicate* on the loop until it holds (hang-guarded)."""
    with anyio.fail_after(GUARD):
        # Thread-side counters have no event to wait on, so poll.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.002)


def gate_call(gate: threading.Event, started: threading.Event | None) -> str:
    """Block until *gate* opens; report start through *started*."""
    if started is not None:
        started.set()
    if not gate.wait(GUARD):
        raise TimeoutError("gate never opened")
    return "opened"


def lane_thread_names() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == THREAD_NAME]


async def test_run_returns_result_of_positional_call(thread_lane: ThreadLane) -> None:
    """run(fn, *args) returns fn(*args), computed off the event-loop thread."""
    loop_thread = threading.get_ident()

    def work(a: int, b: str) -> tuple[int, str, bool, str]:
        current = threading.current_thread()
        return a * 2, b.upper(), threading.get_ident() != loop_thread, current.name

    result = await thread_lane.run(work, 21, "x")
    keyword = await thread_lane.run(functools.partial(int, base=16), "ff")
    assert result == (42, "X", True, THREAD_NAME)
    assert keyword == 255


async def test_exception_propagates_unchanged() -> None:
    """An exception from fn reaches the caller as the same object, traceback intact."""
    raised: list[BaseException] = []

    def fail_here() -> None:
        error = KeyError("boom")
        raised.append(error)
        raise error

    async with ThreadLane(1) as lane:
        with pytest.raises(KeyError) as info:
            await lane.run(fail_here)
        stats = lane.statistics()
    assert info.value is raised[0]
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "fail_here" in frames
    assert (stats.completed, stats.failed) == (0, 1)


async def test_contextvars_copied_into_call() -> None:
    """fn sees the caller's context variables; what it sets stays in the thread's copy."""

    def read_and_set() -> str:
        seen = request_id.get()
        request_id.set("changed-in-thread")
        return seen

    async with ThreadLane(1) as lane:
        token = request_id.set("req-42")
        try:
            assert await lane.run(read_and_set) == "req-42"
            assert request_id.get() == "req-42"
        finally:
            request_id.reset(token)


async def test_lane_runs_while_default_limiter_is_exhausted() -> None:
    """With every token of anyio's default thread limiter borrowed, the lane still runs calls."""
    default = anyio.to_thread.current_default_thread_limiter()
    default.total_tokens = 2
    borrowers = [object(), object()]
    for borrower in borrowers:
        await default.acquire_on_behalf_of(borrower)
    try:
        assert default.available_tokens == 0
        async with ThreadLane(3) as lane:
            with anyio.fail_after(GUARD):
                results = [await lane.run(pow, 2, n) for n in range(5)]
        assert results == [1, 2, 4, 8, 16]
    finally:
        for borrower in borrowers:
            default.release_on_behalf_of(borrower)


async def test_full_lane_borrows_no_default_limiter_tokens() -> None:
    """A lane with every thread busy holds no token of anyio's default limiter."""
    default = anyio.to_thread.current_default_thread_limiter()
    before = default.borrowed_tokens
    gate = threading.Event()
    async with ThreadLane(2) as lane, anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lane.run, gate_call, gate, None)
        await wait_until(lambda: lane.statistics().busy == 2)
        assert lane.statistics().queued == 1
        assert default.borrowed_tokens == before
        gate.set()


async def test_threads_never_exceed_capacity() -> None:
    """Concurrent callers beyond capacity queue: at most `capacity` calls run at once."""
    lock = threading.Lock()
    running = 0
    peak = 0

    def tracked(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            threading.Event().wait(0.005)  # real blocking work
            return n
        finally:
            with lock:
                running -= 1

    results: dict[int, int] = {}

    async def call(n: int) -> None:
        results[n] = await lane.run(tracked, n)

    async with ThreadLane(3) as lane:
        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(call, n)
        stats = lane.statistics()
    assert results == {n: n for n in range(30)}
    assert 1 <= peak <= 3
    assert stats.threads <= 3
    assert stats.completed == 30


async def test_call_cancelled_while_queued_never_runs() -> None:
    """A call cancelled while waiting for a thread is removed at once and never runs."""
    gate = threading.Event()
    ran: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def queued_caller() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await lane.run(ran.append, "queued call ran")

    async with ThreadLane(1) as lane:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lane.run, gate_call, gate, None)
            await wait_until(lambda: lane.statistics().busy == 1)
            tg.start_soon(queued_caller)
            await anyio.wait_all_tasks_blocked()
            assert lane.statistics().queued == 1
            scopes[0].cancel()
            await anyio.wait_all_tasks_blocked()
            assert scopes[0].cancelled_caught  # the caller left while the thread was busy
            assert lane.statistics().queued == 0
            gate.set()
        # The lane keeps working, and its single thread has passed the dropped call.
        assert await lane.run(len, "abc") == 3
    assert ran == []


async def test_already_cancelled_caller_never_queues() -> None:
    """A caller cancelled before run() starts raises at once; fn never runs."""
    ran: list[int] = []
    async with ThreadLane(1) as lane:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await lane.run(ran.append, 1)
        assert scope.cancelled_caught
        assert lane.statistics().queued == 0
        assert await lane.run(abs, -1) == 1
    assert ran == []


async def test_cancelled_running_call_is_waited_for() -> None:
    """By default a cancelled caller waits for its running call, then raises the cancel."""
    gate = threading.Event()
    started = threading.Event()
    finished: list[str] = []

    async def caller() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await lane.run(gate_call, gate, started)
        finished.append("caller done")

    scopes: list[anyio.CancelScope] = []
    async with ThreadLane(1) as lane, anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await wait_until(started.is_set)
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        assert finished == []  # still waiting for the thread
        assert lane.statistics().busy == 1
        gate.set()
    assert finished == ["caller done"]
    assert scopes[0].cancelled_caught
    stats = lane.statistics()
    assert (stats.busy, stats.completed) == (0, 1)


async def test_plain_asyncio_cancel_of_running_call_is_waited_for() -> None:
    """Task.cancel() (no anyio scope) also waits for the running call, then raises."""
    gate = threading.Event()
    started = threading.Event()
    async with ThreadLane(1) as lane:
        task = asyncio.ensure_future(lane.run(gate_call, gate, started))
        await wait_until(started.is_set)
        task.cancel()
        await anyio.wait_all_tasks_blocked()
        task.cancel()  # a second cancel does not cut the wait short either
        await anyio.wait_all_tasks_blocked()
        assert not task.done()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lane.statistics().busy == 0


async def test_abandon_on_cancel_lets_caller_go() -> None:
    """abandon_on_cancel=True: the caller raises at once; the slot is freed when fn ends."""
    gate = threading.Event()
    started = threading.Event()
    async with ThreadLane(1) as lane:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(lane.run, gate_call, gate, started, abandon_on_cancel=True)
                )
                await wait_until(started.is_set)
                scope.cancel()
        assert scope.cancelled_caught
        stats = lane.statistics()
        assert (stats.busy, stats.threads) == (1, 1)  # the thread runs on
        gate.set()
        await wait_until(lambda: lane.statistics().busy == 0)
        assert lane.statistics().completed == 1
        assert await lane.run(abs, -5) == 5


async def test_idle_thread_exits() -> None:
    """A lane thread idle for idle_timeout exits, so an idle lane holds no thread."""
    async with ThreadLane(2, idle_timeout=0.05) as lane:
        assert await lane.run(abs, -1) == 1
        await wait_until(lambda: lane.statistics().threads == 0)
        assert lane_thread_names() == []
        assert await lane.run(abs, -2) == 2  # a new thread starts on demand


async def test_statistics_and_metrics_report_state() -> None:
    """statistics() and metrics() report capacity, busy, queued, threads and totals."""
    gate = threading.Event()
    async with ThreadLane(2) as lane:
        assert lane.statistics() == ThreadLaneStatistics(
            capacity=2, busy=0, queued=0, threads=0, completed=0, failed=0
        )
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lane.run, gate_call, gate, None)
            await wait_until(lambda: lane.statistics().busy == 2)
            assert lane.metrics() == {
                "thread_lane_busy": 2,
                "thread_lane_capacity": 2,
                "thread_lane_queued": 1,
                "thread_lane_threads": 2,
                "thread_lane_completed_total": 0,
                "thread_lane_failed_total": 0,
                "thread_lane_abandoned": 0,
                "thread_lane_abandoned_total": 0,
            }
            gate.set()
        with pytest.raises(ZeroDivisionError):
            await lane.run(divmod, 1, 0)
        metrics = lane.metrics()
    assert metrics["thread_lane_completed_total"] == 3
    assert metrics["thread_lane_failed_total"] == 1
    assert metrics["thread_lane_busy"] == 0


async def test_metrics_are_those_of_the_statistics_in_every_state() -> None:
    """metrics() (built straight from the counters) equals the view's metrics: busy,
    queued, abandoned, completed and failed calls alike."""
    gate = threading.Event()
    started = threading.Event()

    def same() -> bool:
        return lane.metrics() == thread_lane_metrics(lane.statistics())

    async with ThreadLane(2) as lane:
        assert same()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(lane.run, gate_call, gate, started, abandon_on_cancel=True)
                )
                await wait_until(started.is_set)
                scope.cancel()
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lane.run, gate_call, gate, None)
            await wait_until(lambda: lane.statistics().queued == 1)
            assert lane.statistics().abandoned == 1
            assert same()
            gate.set()
        with pytest.raises(ZeroDivisionError):
            await lane.run(divmod, 1, 0)
        await wait_until(lambda: lane.statistics().busy == 0)
        assert lane.statistics().failed == 1
        assert same()


async def test_aclose_fails_queued_and_waits_for_running() -> None:
    """aclose(): queued calls fail with SupervisorClosedError; running calls finish."""
    gate = threading.Event()
    outcomes: dict[str, object] = {}

    async def call(key: str, func: Callable[[], object]) -> None:
        try:
            outcomes[key] = await lane.run(func)
        except SupervisorClosedError as exc:
            outcomes[key] = exc

    ran: list[str] = []
    async with ThreadLane(1) as lane, anyio.create_task_group() as tg:
        tg.start_soon(call, "running", functools.partial(gate_call, gate, None))
        await wait_until(lambda: lane.statistics().busy == 1)
        tg.start_soon(call, "queued", functools.partial(ran.append, "x"))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(lane.aclose)
        await anyio.wait_all_tasks_blocked()
        queued = outcomes["queued"]
        assert isinstance(queued, SupervisorClosedError)
        assert queued.what == "thread lane"
        assert "running" not in outcomes  # aclose waits for it
        gate.set()
    assert outcomes["running"] == "opened"
    assert ran == []
    with pytest.raises(SupervisorClosedError):
        await lane.run(abs, 1)


async def test_aclose_is_idempotent_and_run_outside_raises() -> None:
    """run() before entry or after aclose() raises SupervisorClosedError; aclose() twice is fine."""
    lane = ThreadLane(1)
    with pytest.raises(SupervisorClosedError):
        await lane.run(abs, 1)
    async with lane:
        assert await lane.run(abs, -3) == 3
        await lane.aclose()
        await lane.aclose()
        with pytest.raises(SupervisorClosedError):
            await lane.run(abs, 1)
    await lane.aclose()
    with pytest.raises(RuntimeError):
        await lane.__aenter__()


async def test_no_lane_thread_outlives_aclose() -> None:
    """After aclose() no thread started for the lane is left running lane code."""
    capacity = 3
    # Warm anyio's thread pool so the lane reuses pooled threads instead of
    # leaving fresh idle ones behind (anyio keeps idle threads for 10 s).
    barrier = threading.Barrier(capacity)
    async with anyio.create_task_group() as tg:
        for _ in range(capacity):
            tg.start_soon(anyio.to_thread.run_sync, barrier.wait, GUARD)
    before = set(threading.enumerate())
    gate = threading.Event()
    async with ThreadLane(capacity) as lane:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(lane.run, gate_call, gate, None)
            # a worker is counted before its thread has renamed itself: wait for both
            await wait_until(
                lambda: (
                    lane.statistics().threads == capacity and len(lane_thread_names()) == capacity
                )
            )
            gate.set()
        await lane.aclose()
        assert lane.statistics().threads == 0
        assert lane_thread_names() == []
    assert set(threading.enumerate()) <= before


async def test_aclose_gives_up_on_call_after_close_timeout() -> None:
    """
    A call still running after close_timeout is abandoned: its caller gets
    SupervisorClosedError instead of waiting for ever, and its thread exits when it ends.
    """
    gate = threading.Event()
    started = threading.Event()
    outcome: list[BaseException] = []

    async def caller() -> None:
        try:
            await lane.run(gate_call, gate, started)
        except SupervisorClosedError as exc:
            outcome.append(exc)

    async with ThreadLane(1, close_timeout=0.05) as lane, anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await wait_until(started.is_set)
        with anyio.fail_after(GUARD):
            await lane.aclose()
        assert lane.statistics().busy == 1
    assert len(outcome) == 1
    gate.set()
    await wait_until(lambda: lane.statistics().threads == 0)
    assert lane_thread_names() == []


@pytest.mark.parametrize(
    "kwargs",
    [{"capacity": 0}, {"capacity": 1, "idle_timeout": 0}, {"capacity": 1, "close_timeout": -1}],
)
def test_invalid_arguments_rejected(kwargs: dict[str, int]) -> None:
    """A capacity below 1 or a non-positive timeout raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        ThreadLane(**kwargs)


# -- timeouts and abandoned threads ------------------------------------------------------


async def test_timeout_abandons_a_running_call_and_counts_it() -> None:
    """
    A running call past its timeout raises CallTimeoutError in the caller; its thread
    runs on, counted as abandoned until it returns, and the lane keeps serving.
    """
    from resource_supervisor._exceptions import CallTimeoutError

    gate = threading.Event()
    started = threading.Event()
    async with ThreadLane(2) as lane:
        with pytest.raises(CallTimeoutError, match="thread was abandoned") as info:
            await lane.run(gate_call, gate, started, timeout=0.2)
        assert info.value.timeout == 0.2
        assert started.is_set()
        stats = lane.statistics()
        assert (stats.abandoned, stats.abandoned_total, stats.busy) == (1, 1, 1)
        assert lane.metrics()["thread_lane_abandoned"] == 1
        assert await lane.run(sum, (1, 2)) == 3  # the other thread still serves
        gate.set()
        await wait_until(lambda: lane.statistics().abandoned == 0)
        assert lane.statistics().abandoned_total == 1


async def test_timeout_of_a_queued_call_means_it_never_runs() -> None:
    """A call still queued at its timeout is removed: CallTimeoutError, and it never runs."""
    from resource_supervisor._exceptions import CallTimeoutError

    gate = threading.Event()
    started = threading.Event()
    ran: list[int] = []
    async with ThreadLane(1) as lane, anyio.create_task_group() as tg:
        tg.start_soon(lane.run, gate_call, gate, started)
        await anyio.to_thread.run_sync(started.wait)
        with pytest.raises(CallTimeoutError, match="never started"):
            await lane.run(ran.append, 1, timeout=0.1)
        assert lane.statistics().abandoned_total == 0
        gate.set()
    assert ran == []


async def test_abandon_on_cancel_is_counted_and_lane_threads_are_daemons() -> None:
    """A call abandoned on cancel is counted; lane threads are daemons (exit never waits)."""
    gate = threading.Event()
    started = threading.Event()
    async with ThreadLane(1) as lane:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(lane.run, gate_call, gate, started, abandon_on_cancel=True)
            )
            await anyio.to_thread.run_sync(started.wait)
            lanes = [t for t in threading.enumerate() if t.name == THREAD_NAME]
            assert lanes
            assert all(t.daemon for t in lanes)
            tg.cancel_scope.cancel()
        assert lane.statistics().abandoned == 1
        gate.set()
        await wait_until(lambda: lane.statistics().abandoned == 0)


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
async def test_invalid_timeout_is_refused(value: float) -> None:
    """A timeout that is not a positive finite number is a ValueError, before queueing."""
    async with ThreadLane(1) as lane:
        with pytest.raises(ValueError, match="timeout"):
            await lane.run(sum, (1,), timeout=value)
        assert lane.statistics().threads == 0


async def test_calls_can_use_anyio_from_thread() -> None:
    """Code in a lane call can call back into the loop with anyio.from_thread."""
    import anyio.from_thread

    async def on_the_loop() -> int:
        await anyio.lowlevel.checkpoint()
        return threading.get_ident()

    loop_thread = threading.get_ident()
    async with ThreadLane(1) as lane:
        assert await lane.run(anyio.from_thread.run, on_the_loop) == loop_thread
        assert await lane.run(anyio.from_thread.run_sync, threading.get_ident) == loop_thread
        await lane.run(anyio.from_thread.check_cancelled)
