"""Tests for cleanup handlers and the dispatcher (resource_supervisor._cleanup)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from resource_supervisor._cleanup import (
    Cleanup,
    CleanupDispatcher,
    CleanupReport,
    CleanupRequest,
    HandlerOutcome,
)
from resource_supervisor._snapshot import PressureLevel
from tests.strategies import make_snapshot

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

NORMAL = CleanupRequest(aggressive=False, level=PressureLevel.WARNING, reason="test", snapshot=None)
AGGRESSIVE = CleanupRequest(
    aggressive=True, level=PressureLevel.CRITICAL, reason="test", snapshot=None
)


def make_dispatcher(
    *, handler_timeout: float = 10.0, measure: Callable[[], int] = lambda: 0
) -> CleanupDispatcher:
    return CleanupDispatcher(handler_timeout=handler_timeout, measure_used_bytes=measure)


class GatedHandler:
    """A Cleanup object that records each request and waits for its gate to open."""

    def __init__(self) -> None:
        self.requests: list[CleanupRequest] = []
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.cancelled = 0
        self._entry = anyio.Event()

    async def wait_for_entries(self, count: int) -> None:
        """Wait until cleanup() has been entered *count* times in all."""
        with anyio.fail_after(5):  # hang guard only
            while len(self.requests) < count:
                await self._entry.wait()

    async def cleanup(self, request: CleanupRequest) -> None:
        self.requests.append(request)
        self.entered.set()
        self._entry.set()
        self._entry = anyio.Event()
        try:
            await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


async def test_handlers_run_concurrently() -> None:
    """Handlers run at the same time: two that each wait for the other both finish."""
    first_in, second_in = anyio.Event(), anyio.Event()

    async def first(request: CleanupRequest) -> None:
        first_in.set()
        await second_in.wait()

    async def second(request: CleanupRequest) -> None:
        second_in.set()
        await first_in.wait()

    dispatcher = make_dispatcher()
    dispatcher.register(first)
    dispatcher.register(second)
    with anyio.fail_after(5):
        report = await dispatcher.run(NORMAL)
    assert [o.status for o in report.outcomes] == ["ok", "ok"]
    assert report.ok
    assert report.failures == ()


async def test_handler_error_is_recorded_logged_and_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing handler is recorded and logged with its traceback; the others still run."""
    ran: list[str] = []

    async def broken(request: CleanupRequest) -> None:
        raise ValueError("boom")

    async def fine(request: CleanupRequest) -> None:
        await anyio.lowlevel.checkpoint()
        ran.append("fine")

    dispatcher = make_dispatcher()
    dispatcher.register(broken, name="broken")
    dispatcher.register(fine, name="fine")
    with caplog.at_level(logging.WARNING, logger="resource_supervisor.cleanup"):
        report = await dispatcher.run(NORMAL)
    assert ran == ["fine"]
    broken_outcome, fine_outcome = report.outcomes
    assert broken_outcome.status == "error"
    assert broken_outcome.error == "ValueError: boom"
    assert fine_outcome == HandlerOutcome("fine", "ok", fine_outcome.duration_seconds)
    assert not report.ok
    assert report.failures == (broken_outcome,)
    [record] = [r for r in caplog.records if r.name == "resource_supervisor.cleanup"]
    assert record.levelno == logging.WARNING
    assert "broken" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert dispatcher.statistics().handler_failures == 1


async def test_hanging_handler_times_out_without_delaying_others() -> None:
    """A handler past its timeout is cancelled and recorded; the others complete normally."""
    hanging = GatedHandler()
    finished: list[str] = []

    async def quick(request: CleanupRequest) -> None:
        finished.append("quick")

    dispatcher = make_dispatcher(handler_timeout=30.0)
    dispatcher.register(hanging, name="hanging", timeout=0.05)
    dispatcher.register(quick, name="quick")
    with anyio.fail_after(10):
        report = await dispatcher.run(NORMAL)
    assert finished == ["quick"]
    assert [(o.name, o.status) for o in report.outcomes] == [
        ("hanging", "timeout"),
        ("quick", "ok"),
    ]
    assert report.outcomes[0].error is not None
    assert hanging.cancelled == 1
    stats = dispatcher.statistics()
    assert (stats.handler_failures, stats.handler_timeouts) == (1, 1)


async def test_handler_raising_timeout_error_is_an_error_not_a_timeout() -> None:
    """A handler's own TimeoutError is recorded as an error, not as the dispatcher's timeout."""

    async def raises_timeout(request: CleanupRequest) -> None:
        raise TimeoutError("upstream")

    dispatcher = make_dispatcher()
    dispatcher.register(raises_timeout)
    report = await dispatcher.run(NORMAL)
    assert report.outcomes[0].status == "error"
    assert report.outcomes[0].error == "TimeoutError: upstream"
    assert dispatcher.statistics().handler_timeouts == 0


async def test_sync_handler_runs_in_a_worker_thread_off_the_loop() -> None:
    """A sync handler is accepted and called in a worker thread, so it never blocks the loop."""
    threads: list[int] = []
    ticks: list[float] = []

    def blocking(request: CleanupRequest) -> None:
        threads.append(threading.get_ident())
        time.sleep(0.3)  # blocks its thread, not the loop

    class SyncCleanup:
        def cleanup(self, request: CleanupRequest) -> None:
            threads.append(threading.get_ident())

    async def ticker() -> None:
        while True:
            ticks.append(anyio.current_time())
            await anyio.sleep(0.01)

    dispatcher = make_dispatcher()
    dispatcher.register(blocking)
    dispatcher.register(SyncCleanup(), name="object")  # type: ignore[arg-type]
    dispatcher.register(lambda request: anyio.lowlevel.checkpoint(), name="lambda")
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        report = await dispatcher.run(NORMAL)
        tg.cancel_scope.cancel()
    assert [o.status for o in report.outcomes] == ["ok", "ok", "ok"], report.outcomes
    assert len(threads) == 2
    assert threading.get_ident() not in threads
    assert len(ticks) >= 5  # the loop kept ticking while the handler slept


async def test_hung_sync_handler_times_out_and_is_not_started_twice() -> None:
    """A sync handler past its timeout is abandoned; later passes report it, not re-run it."""
    release = threading.Event()
    calls: list[int] = []

    def hangs(request: CleanupRequest) -> None:
        calls.append(1)
        release.wait(10)

    dispatcher = make_dispatcher()
    dispatcher.register(hangs, timeout=0.1)
    first = await dispatcher.run(NORMAL)
    second = await dispatcher.run(NORMAL)
    release.set()
    assert first.outcomes[0].status == "timeout"
    assert second.outcomes[0].status == "error"
    assert "still running since an earlier pass" in (second.outcomes[0].error or "")
    assert calls == [1]


async def test_register_accepts_cleanup_objects_and_callables() -> None:
    """Objects with `cleanup` and async callables register under default or given names."""

    async def reclaim(request: CleanupRequest) -> None:
        pass

    handler = GatedHandler()
    handler.gate.set()
    assert isinstance(handler, Cleanup)
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    dispatcher.register(reclaim)
    dispatcher.register(functools.partial(reclaim), name="partial")
    assert dispatcher.handler_names == (
        "GatedHandler",
        "test_register_accepts_cleanup_objects_and_callables.<locals>.reclaim",
        "partial",
    )
    report = await dispatcher.run(NORMAL)
    assert [o.name for o in report.outcomes] == list(dispatcher.handler_names)
    assert handler.requests == [NORMAL]


def test_register_rejects_non_handlers() -> None:
    """register() raises TypeError, naming the expected shapes, for a non-handler."""
    dispatcher = make_dispatcher()
    with pytest.raises(TypeError, match="async def cleanup"):
        dispatcher.register(42)  # type: ignore[arg-type]


def test_register_rejects_duplicate_names() -> None:
    """A second handler under a registered name raises ValueError suggesting name=."""
    dispatcher = make_dispatcher()
    dispatcher.register(GatedHandler())
    with pytest.raises(ValueError, match="name="):
        dispatcher.register(GatedHandler())
    dispatcher.register(GatedHandler(), name="second")
    assert dispatcher.handler_names == ("GatedHandler", "second")


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_timeouts_must_be_positive_and_finite(timeout: float) -> None:
    """handler_timeout and per-handler timeouts reject non-positive and non-finite values."""
    with pytest.raises(ValueError, match="handler_timeout"):
        make_dispatcher(handler_timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        make_dispatcher().register(GatedHandler(), timeout=timeout)


async def test_unregister_removes_handler_and_is_idempotent() -> None:
    """The function returned by register() removes the handler; calling it again is harmless."""
    dispatcher = make_dispatcher()
    unregister = dispatcher.register(GatedHandler())
    unregister()
    unregister()
    replacement = GatedHandler()
    replacement.gate.set()
    dispatcher.register(replacement)  # same name, new registration
    unregister()  # must not remove the replacement
    report = await dispatcher.run(NORMAL)
    assert [o.name for o in report.outcomes] == ["GatedHandler"]
    assert replacement.requests == [NORMAL]


async def test_report_measures_memory_around_handlers() -> None:
    """Memory is measured right before and right after the handlers; freed is the drop."""
    used = [1000]

    async def frees(request: CleanupRequest) -> None:
        used[0] -= 400

    dispatcher = make_dispatcher(measure=lambda: used[0])
    dispatcher.register(frees)
    snapshot = make_snapshot()
    request = CleanupRequest(
        aggressive=False, level=PressureLevel.WARNING, reason="r", snapshot=snapshot
    )
    report = await dispatcher.run(request)
    assert (report.memory_before_bytes, report.memory_after_bytes) == (1000, 600)
    assert report.bytes_freed == 400
    assert report.request.snapshot is snapshot
    assert report.duration_seconds >= 0
    assert report.started_at > 1_600_000_000  # wall clock


def test_bytes_freed_is_never_negative() -> None:
    """Memory that grew during a pass counts as zero bytes freed."""
    report = CleanupReport(NORMAL, (), 0.0, 0.0, memory_before_bytes=10, memory_after_bytes=50)
    assert report.bytes_freed == 0


async def run_into(
    dispatcher: CleanupDispatcher, request: CleanupRequest, reports: list[CleanupReport]
) -> None:
    reports.append(await dispatcher.run(request))


async def test_same_severity_request_joins_running_pass() -> None:
    """A request arriving during a pass of the same severity returns that pass's report."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    reports: list[CleanupReport] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        await handler.entered.wait()
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        await anyio.wait_all_tasks_blocked()
        handler.gate.set()
    assert len(handler.requests) == 1
    assert len(reports) == 3
    assert reports[1] is reports[0]
    assert reports[2] is reports[0]
    stats = dispatcher.statistics()
    assert (stats.runs, stats.coalesced) == (1, 2)
    assert stats.last_report is reports[0]


async def test_normal_request_joins_running_aggressive_pass() -> None:
    """A normal request arriving during an aggressive pass joins it."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    reports: list[CleanupReport] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_into, dispatcher, AGGRESSIVE, reports)
        await handler.entered.wait()
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        await anyio.wait_all_tasks_blocked()
        handler.gate.set()
    assert handler.requests == [AGGRESSIVE]
    assert reports[0] is reports[1]
    assert reports[0].request.aggressive


async def test_aggressive_request_during_normal_pass_runs_one_aggressive_pass_after() -> None:
    """Aggressive requests during a normal pass start exactly one aggressive pass after it."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    normal_reports: list[CleanupReport] = []
    aggressive_reports: list[CleanupReport] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_into, dispatcher, NORMAL, normal_reports)
        await handler.entered.wait()
        for _ in range(3):
            tg.start_soon(run_into, dispatcher, AGGRESSIVE, aggressive_reports)
        tg.start_soon(run_into, dispatcher, NORMAL, normal_reports)
        await anyio.wait_all_tasks_blocked()
        assert handler.requests == [NORMAL]  # nothing stacked while the pass runs
        handler.gate.set()
    assert handler.requests == [NORMAL, AGGRESSIVE]
    assert len(aggressive_reports) == 3
    assert all(report is aggressive_reports[0] for report in aggressive_reports)
    assert aggressive_reports[0].request.aggressive
    assert normal_reports[0] is normal_reports[1]
    assert not normal_reports[0].request.aggressive
    assert dispatcher.statistics().runs == 2


async def test_cancelled_caller_cancels_handlers_and_propagates() -> None:
    """Cancelling run()'s caller cancels its handlers; the cancellation propagates."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    reached_end = False
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            nonlocal reached_end
            await dispatcher.run(NORMAL)
            reached_end = True

        tg.start_soon(caller)
        await handler.entered.wait()
        tg.cancel_scope.cancel()
    assert tg.cancel_scope.cancelled_caught
    assert not reached_end
    assert handler.cancelled == 1
    stats = dispatcher.statistics()
    assert (stats.runs, stats.handler_timeouts, stats.last_report) == (0, 0, None)


async def test_joiner_of_cancelled_pass_runs_its_own() -> None:
    """When the caller running a pass is cancelled, callers that joined it start another."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    reports: list[CleanupReport] = []
    async with anyio.create_task_group() as tg:
        owner_scope = anyio.CancelScope()

        async def owner() -> None:
            with owner_scope:
                await dispatcher.run(NORMAL)

        tg.start_soon(owner)
        await handler.entered.wait()
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        await anyio.wait_all_tasks_blocked()
        owner_scope.cancel()
        await handler.wait_for_entries(2)  # the joiner started a fresh pass
        handler.gate.set()
    assert handler.cancelled == 1
    assert len(reports) == 1
    assert reports[0].ok
    assert dispatcher.statistics().runs == 1


async def test_cancelled_queued_aggressive_request_hands_over() -> None:
    """If the caller queuing an aggressive pass is cancelled, another aggressive caller runs it."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    reports: list[CleanupReport] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        await handler.entered.wait()
        queuer_scope = anyio.CancelScope()
        queuer_left = anyio.Event()

        async def queuer() -> None:
            with queuer_scope:
                await dispatcher.run(AGGRESSIVE)
            queuer_left.set()

        tg.start_soon(queuer)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(run_into, dispatcher, AGGRESSIVE, reports)
        await anyio.wait_all_tasks_blocked()
        queuer_scope.cancel()
        await queuer_left.wait()
        await anyio.wait_all_tasks_blocked()
        handler.gate.set()
    assert handler.requests == [NORMAL, AGGRESSIVE]
    assert [report.request.aggressive for report in reports] == [False, True]


async def test_cancelled_joiner_leaves_pass_running() -> None:
    """A cancelled caller that only joined a pass does not disturb it."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    reports: list[CleanupReport] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_into, dispatcher, NORMAL, reports)
        await handler.entered.wait()
        joiner_scope = anyio.CancelScope()
        joiner_left = anyio.Event()

        async def joiner() -> None:
            with joiner_scope:
                await dispatcher.run(NORMAL)
            joiner_left.set()

        tg.start_soon(joiner)
        await anyio.wait_all_tasks_blocked()
        joiner_scope.cancel()
        await joiner_left.wait()
        handler.gate.set()
    assert handler.cancelled == 0
    assert len(reports) == 1
    assert reports[0].ok


async def test_run_with_no_handlers_reports_empty_pass() -> None:
    """A pass with no handlers still measures memory and counts as a run."""
    dispatcher = make_dispatcher(measure=lambda: 123)
    report = await dispatcher.run(NORMAL)
    assert report.outcomes == ()
    assert report.ok
    assert report.memory_before_bytes == report.memory_after_bytes == 123
    assert dispatcher.statistics().runs == 1


def test_cleanup_request_defaults() -> None:
    """A request names memory as its resource and no device unless told otherwise."""
    assert (NORMAL.resource, NORMAL.device) == ("memory", None)
    gpu = CleanupRequest(
        aggressive=True,
        level=PressureLevel.CRITICAL,
        reason="gpu",
        snapshot=None,
        resource="gpu",
        device="cuda:0",
    )
    assert (gpu.resource, gpu.device) == ("gpu", "cuda:0")


_: Callable[[CleanupRequest], Awaitable[None]] = GatedHandler().cleanup  # type check only


# -- isolation: whatever a handler raises stays its own outcome -------------------------


def _raiser(exc_type: type[BaseException]) -> Callable[[CleanupRequest], Awaitable[None]]:
    async def handler(request: CleanupRequest) -> None:
        await anyio.lowlevel.checkpoint()
        raise exc_type("from the handler")

    return handler


async def _cancels_own_task(request: CleanupRequest) -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await anyio.sleep(5)


@pytest.mark.parametrize(
    "bad",
    [
        _raiser(KeyboardInterrupt),
        _raiser(SystemExit),
        _raiser(GeneratorExit),
        _raiser(asyncio.CancelledError),
        _cancels_own_task,
    ],
    ids=["KeyboardInterrupt", "SystemExit", "GeneratorExit", "CancelledError", "self-cancel"],
)
async def test_any_raise_of_a_handler_leaves_its_siblings_and_the_report_whole(
    bad: Callable[[CleanupRequest], Awaitable[None]],
) -> None:
    """
    A handler raising a BaseException, its own CancelledError, or cancelling its own
    task is recorded as an error and counted; its siblings (a slow one included) run
    to completion, every handler is in the report, ok is False, and the caller is
    not cancelled.
    """
    done: list[str] = []

    async def slow(request: CleanupRequest) -> None:
        await anyio.sleep(0.05)
        done.append("slow")

    async def quick(request: CleanupRequest) -> None:
        done.append("quick")

    dispatcher = make_dispatcher()
    dispatcher.register(slow, name="slow")
    dispatcher.register(bad, name="bad")
    dispatcher.register(quick, name="quick")
    for _ in range(2):  # every pass, not just the first
        with anyio.fail_after(5):
            report = await dispatcher.run(NORMAL)
        assert [(o.name, o.status) for o in report.outcomes] == [
            ("slow", "ok"),
            ("bad", "error"),
            ("quick", "ok"),
        ]
        assert report.ok is False
        await anyio.lowlevel.checkpoint()  # the caller's task carries no leftover cancellation
    assert done == ["quick", "slow", "quick", "slow"]
    assert dispatcher.statistics().handler_failures == 2


async def test_sync_handler_raising_keyboard_interrupt_in_its_thread_is_recorded() -> None:
    """A KeyboardInterrupt raised in a sync handler's thread is its error, never a Ctrl-C."""

    def interrupts(request: CleanupRequest) -> None:
        raise KeyboardInterrupt

    dispatcher = make_dispatcher()
    dispatcher.register(interrupts)
    report = await dispatcher.run(NORMAL)
    assert report.outcomes[0].status == "error"
    assert report.outcomes[0].error == "KeyboardInterrupt"


async def test_cancelling_the_pass_still_cancels_its_handlers() -> None:
    """A real cancellation of the pass is not absorbed: handlers are cancelled, no report."""
    handler = GatedHandler()
    dispatcher = make_dispatcher()
    dispatcher.register(handler)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run, NORMAL)
        await handler.entered.wait()
        tg.cancel_scope.cancel()
    assert handler.cancelled == 1
    assert dispatcher.statistics().runs == 0
    assert dispatcher.statistics().handler_failures == 0
