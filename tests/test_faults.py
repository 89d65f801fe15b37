"""
Fault injection: the supervisor keeps a service alive and loses no work when parts fail.

Workers of the process lane are killed with SIGKILL from outside and end themselves
with ``os._exit`` during ``run_in_process`` and ``map_in_processes``; cleanup
handlers and metrics providers raise, hang and are cancelled; subscribers never
read; callers are cancelled at random moments. Every call either returns its
right result or fails with :class:`WorkerCrashedError` for the one call that was
running on the dead worker; no item runs twice (executions are counted in files,
see ``tests/_fault_workers.py``); nothing hangs (hang guards only), and the lanes
end idle and working.

Random choices come from ``random.Random(SEED)``, so a failure reproduces; set
``RS_FAULT_SEED`` to try another seed.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import time
import tracemalloc
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

from resource_supervisor import (
    CleanupRequest,
    Supervisor,
    SupervisorClosedError,
    SupervisorSettings,
    WorkerCrashedError,
)
from resource_supervisor.testing import ScriptedSource
from tests import _fault_workers as fw
from tests._loop_guard import blocking_setup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from pathlib import Path

    from resource_supervisor import MetricsSnapshot
    from resource_supervisor._snapshot import MetricValue

SEED = int(os.environ.get("RS_FAULT_SEED", "20240607"))
GUARD_SECONDS = 30.0
WORKERS = 2

pytestmark = pytest.mark.timeout(60)


def settings(**overrides: object) -> SupervisorSettings:
    """Settings for fault tests: no background sampling, 2 worker processes, 4 threads."""
    values: dict[str, object] = {
        "monitoring_enabled": False,
        "concurrency": {"default_cpu_workers": WORKERS, "default_io_workers": 4},
    }
    values.update(overrides)
    return SupervisorSettings.model_validate(values)


@blocking_setup("lists worker processes through psutil")
def live_workers() -> list[psutil.Process]:
    """Worker processes of this process's lanes: children of the lane's forkserver."""
    workers = []
    for child in psutil.Process().children():
        for grandchild in child.children():
            try:
                if grandchild.status() != psutil.STATUS_ZOMBIE:
                    workers.append(grandchild)
            except psutil.NoSuchProcess:
                pass
    return workers


async def wait_until_idle(sup: Supervisor) -> dict[str, MetricValue]:
    """
    Wait (hang guard only) until both lanes report nothing running or queued and
    at most the configured worker processes are alive; return the metrics.
    """
    with anyio.fail_after(GUARD_SECONDS):
        while True:
            metrics = sup.executors.metrics()
            if (
                metrics["thread_lane_busy"] == 0
                and metrics["thread_lane_queued"] == 0
                and metrics.get("process_workers_busy", 0) == 0
                and metrics.get("process_queue_depth", 0) == 0
                and len(live_workers()) <= WORKERS
            ):
                return metrics
            await anyio.sleep(0.01)


async def collect(iterator: AsyncIterator[int], into: list[int]) -> None:
    """Append every result of a map to *into*, closing the iterator however it ends."""
    try:
        async for result in iterator:
            into.append(result)  # noqa: PERF401 - keep the results before an error
    finally:
        aclose: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


# -- the process lane: workers killed or exiting during calls -----------------------


async def test_sigkill_of_busy_workers_fails_only_the_running_calls(tmp_path: Path) -> None:
    """
    Workers SIGKILLed from outside while running a call: that call raises
    WorkerCrashedError naming the signal; every other call returns its right
    result; no call runs twice; the lane then works again.
    """
    rng = random.Random(SEED)
    directory = str(tmp_path)
    calls = 36
    delays = [rng.uniform(0.01, 0.06) for _ in range(calls)]
    outcomes: dict[int, int | BaseException] = {}
    killed: dict[int, int] = {}  # item -> pid killed while running it

    async with Supervisor(settings()) as sup:

        async def call(item: int) -> None:
            try:
                outcomes[item] = await sup.executors.run_in_process(
                    fw.sleepy_square, directory, delays[item], item
                )
            except WorkerCrashedError as exc:
                outcomes[item] = exc

        async def killer() -> None:
            for _ in range(5):
                await anyio.sleep(rng.uniform(0.02, 0.15))
                while True:  # wait until some call is running, then kill its worker
                    candidates = {
                        item: pid
                        for item, pid in fw.running(directory).items()
                        if item not in killed
                    }
                    if candidates or len(outcomes) == calls:
                        break
                    await anyio.sleep(0.002)
                if not candidates:
                    return
                item = rng.choice(sorted(candidates))
                killed[item] = candidates[item]
                os.kill(candidates[item], signal.SIGKILL)

        with anyio.fail_after(GUARD_SECONDS):
            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                for item in range(calls):
                    tg.start_soon(call, item)
        assert await sup.executors.run_in_process(fw.square, 12) == 144
        metrics = await wait_until_idle(sup)

    crashed = {item for item, outcome in outcomes.items() if isinstance(outcome, BaseException)}
    assert killed, "the killer never found a running call"
    assert crashed, "no kill hit a running call"
    # a kill can land just after its call finished: then that call succeeded
    assert crashed <= set(killed)
    for item in crashed:
        error = outcomes[item]
        assert isinstance(error, WorkerCrashedError)
        assert error.signal == signal.SIGKILL
    for item in range(calls):
        assert fw.executions(directory, item) == 1, item
        if item not in crashed:
            assert outcomes[item] == item * item
    assert int(metrics["process_crashed_total"]) >= len(crashed)


async def test_os_exit_in_a_worker_fails_only_that_call(tmp_path: Path) -> None:
    """
    A worker that ends itself with os._exit fails exactly the call it ran
    (WorkerCrashedError with the exit code); the calls queued or batched behind
    it run once on a replacement and return their right results.
    """
    rng = random.Random(SEED + 1)
    directory = str(tmp_path)
    calls = 40
    exit_items = frozenset(rng.sample(range(calls), 6))
    outcomes: dict[int, int | BaseException] = {}

    async with Supervisor(settings()) as sup:

        async def call(item: int) -> None:
            try:
                outcomes[item] = await sup.executors.run_in_process(
                    fw.exit_on, directory, exit_items, item
                )
            except WorkerCrashedError as exc:
                outcomes[item] = exc

        with anyio.fail_after(GUARD_SECONDS):
            async with anyio.create_task_group() as tg:
                for item in range(calls):
                    tg.start_soon(call, item)
        metrics = await wait_until_idle(sup)
        assert await sup.executors.run_in_process(fw.square, 5) == 25

    for item in range(calls):
        assert fw.executions(directory, item) == 1, item
        outcome = outcomes[item]
        if item in exit_items:
            assert isinstance(outcome, WorkerCrashedError), (item, outcome)
            assert outcome.exitcode == fw.EXIT_CODE
        else:
            assert outcome == item * item
    assert metrics["process_crashed_total"] == len(exit_items)


async def test_map_with_os_exit_yields_a_right_prefix_then_raises(tmp_path: Path) -> None:
    """
    A map whose worker exits mid-chunk yields the right results, in order, for a
    prefix of the items and then raises WorkerCrashedError; no item ran twice, and
    every yielded item ran exactly once.
    """
    rng = random.Random(SEED + 2)
    directory = str(tmp_path)
    items = 400
    fatal = rng.randrange(40, items)
    results: list[int] = []
    async with Supervisor(settings()) as sup:
        func = functools.partial(fw.exit_on, directory, frozenset({fatal}))
        with anyio.fail_after(GUARD_SECONDS), pytest.raises(WorkerCrashedError) as caught:
            await collect(sup.executors.map_in_processes(func, range(items)), results)
        assert caught.value.exitcode == fw.EXIT_CODE
        await wait_until_idle(sup)
        after: list[int] = []
        await collect(sup.executors.map_in_processes(fw.square, range(50)), after)
        assert after == [item * item for item in range(50)]

    assert results == [item * item for item in range(len(results))]
    assert len(results) <= fatal
    assert fw.executions(directory, fatal) == 1
    for item in range(items):
        assert fw.executions(directory, item) <= 1, item
    for item in range(len(results)):
        assert fw.executions(directory, item) == 1, item


async def test_map_with_sigkill_from_outside_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """
    Workers SIGKILLed at random moments during maps: each map either completes
    with every result right and every item run exactly once, or raises
    WorkerCrashedError after a right, ordered prefix; no item ever runs twice.
    """
    rng = random.Random(SEED + 3)
    items = 120
    completed = crashed = 0
    async with Supervisor(settings()) as sup:
        for round_ in range(4):
            directory = tmp_path / f"round{round_}"
            await anyio.Path(directory).mkdir()
            results: list[int] = []
            func = functools.partial(fw.sleepy_square, str(directory), 0.002)
            outcome: BaseException | None = None

            async def run_map(
                func: Callable[[int], int] = func, results: list[int] = results
            ) -> None:
                nonlocal outcome
                try:
                    await collect(sup.executors.map_in_processes(func, range(items)), results)
                except WorkerCrashedError as exc:
                    outcome = exc

            @blocking_setup("reads the worker files and kills a worker through psutil")
            async def kill_one(directory: Path = directory) -> None:
                await anyio.sleep(rng.uniform(0.0, 0.2))
                busy = fw.running(str(directory))
                workers = live_workers()
                if busy:
                    os.kill(rng.choice(sorted(busy.values())), signal.SIGKILL)
                elif workers:
                    workers[rng.randrange(len(workers))].kill()

            with anyio.fail_after(GUARD_SECONDS):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_map)
                    tg.start_soon(kill_one)
            await wait_until_idle(sup)

            assert results == [item * item for item in range(len(results))]
            for item in range(items):
                assert fw.executions(str(directory), item) <= 1, (round_, item)
            if outcome is None:
                completed += 1
                assert len(results) == items
                assert all(fw.executions(str(directory), item) == 1 for item in range(items))
            else:
                crashed += 1
                assert isinstance(outcome, WorkerCrashedError)
                assert outcome.signal == signal.SIGKILL
        assert await sup.executors.run_in_process(fw.square, 9) == 81
    assert completed + crashed == 4


# -- cleanup handlers and metrics providers that fail ---------------------------------


async def test_cleanup_handlers_that_raise_hang_or_are_cancelled_harm_no_other() -> None:
    """
    A raising handler is reported as error and a hanging one as timeout, while a
    healthy handler still runs in the same pass; a pass cancelled by its caller
    stops its handlers, and the next pass runs every handler again.
    """
    ran: list[str] = []
    entered = anyio.Event()
    release = anyio.Event()

    async def healthy(request: CleanupRequest) -> None:
        ran.append("healthy")

    async def broken(request: CleanupRequest) -> None:
        raise RuntimeError("cache is corrupt")

    async def hanging(request: CleanupRequest) -> None:
        await anyio.sleep_forever()

    async def blocking(request: CleanupRequest) -> None:
        entered.set()
        await release.wait()

    async with Supervisor(settings(cleanup_handler_timeout=0.2)) as sup:
        sup.register_cleanup(healthy, name="healthy")
        sup.register_cleanup(broken, name="broken")
        unregister_hanging = sup.register_cleanup(hanging, name="hanging")
        with anyio.fail_after(GUARD_SECONDS):
            report = await sup.request_cleanup(reason="faults")
        status = {outcome.name: outcome.status for outcome in report.outcomes}
        assert status["healthy"] == "ok"
        assert status["broken"] == "error"
        assert status["hanging"] == "timeout"
        assert ran == ["healthy"]

        unregister_hanging()
        sup.register_cleanup(blocking, name="blocking", timeout=GUARD_SECONDS)
        with anyio.fail_after(GUARD_SECONDS):
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(sup.request_cleanup, reason="to cancel"))
                await entered.wait()
                tg.cancel_scope.cancel()
        release.set()
        with anyio.fail_after(GUARD_SECONDS):
            report = await sup.request_cleanup(reason="after cancel")
        status = {outcome.name: outcome.status for outcome in report.outcomes}
        assert status["healthy"] == "ok"
        assert status["blocking"] == "ok"
        assert ran.count("healthy") == 3
        snapshot = await sup.update_metrics()
        assert snapshot["cleanup_handler_failures_total"] >= 2
        assert snapshot["cleanup_handler_timeouts_total"] >= 1


async def test_providers_that_raise_hang_or_are_cancelled_never_stop_sampling() -> None:
    """
    A raising provider and hanging sync and async providers are skipped after
    provider_timeout and counted; the healthy provider's metrics still arrive; a
    sample cancelled while a provider hangs publishes nothing, and the next
    sample works.
    """
    unblock = threading.Event()

    def healthy() -> Mapping[str, int]:
        return {"items": 7}

    def broken() -> Mapping[str, int]:
        raise OSError("backend unreachable")

    def hanging_sync() -> Mapping[str, int]:
        unblock.wait(GUARD_SECONDS)
        return {"late": 1}

    async def hanging_async() -> Mapping[str, int]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    try:
        async with Supervisor(settings(provider_timeout=0.2)) as sup:
            sup.register_metrics_provider("healthy", healthy)
            sup.register_metrics_provider("broken", broken)
            sup.register_metrics_provider("stuck", hanging_sync)
            sup.register_metrics_provider("stalled", hanging_async)
            with anyio.fail_after(GUARD_SECONDS):
                first = await sup.update_metrics()
                second = await sup.update_metrics()
            assert first["healthy_items"] == 7
            assert second["healthy_items"] == 7
            assert "stuck_late" not in second
            assert int(second["provider_failures_total"]) >= 6  # 3 failing x 2 samples

            previous = sup.metrics
            with anyio.fail_after(GUARD_SECONDS):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sup.update_metrics)
                    await anyio.wait_all_tasks_blocked()
                    tg.cancel_scope.cancel()
            assert sup.metrics is previous

            sup.unregister_metrics_provider("stalled")
            unblock.set()
            with anyio.fail_after(GUARD_SECONDS):
                third = await sup.update_metrics()
            assert third["healthy_items"] == 7
            assert third is sup.metrics
    finally:
        unblock.set()


# -- subscribers that never read -----------------------------------------------------------


class ReplaySource(ScriptedSource):
    """
    The real sampler read once, then replayed: lets a test publish 100k snapshots
    quickly while every metric is still one this machine really reported.
    """

    _first: dict[str, MetricValue] | None = None

    async def sample(self) -> dict[str, MetricValue]:
        """
        Return a copy of the first real sample.

        Cancellation:
            Only the first call awaits (the real sample); later calls do not.
        """
        if self._first is None:
            self._first = await super().sample()
        return dict(self._first)


@pytest.mark.timeout(180)  # CPU-bound: a hang guard on a loaded machine
async def test_subscribers_that_never_read_stay_bounded() -> None:
    """
    Over 25k publishes, subscribers that never read hold at most their buffer
    (drop-oldest keeps the newest 16, latest-only keeps 1), count every other
    snapshot as dropped, and the memory traced while publishing does not grow.
    """
    publishes = 25_000  # each one a full sample: 5k to fill up, then 2 x 10k traced
    async with (
        Supervisor(settings(), source=ReplaySource()) as sup,
        sup.subscribe(buffer=16) as oldest,
        sup.subscribe(policy="latest") as latest,
    ):
        last: MetricsSnapshot | None = None
        for _ in range(publishes - 20_000):
            last = await sup.update_metrics()
        tracemalloc.start()
        try:
            for _ in range(10_000):
                await sup.update_metrics()
            middle, _ = tracemalloc.get_traced_memory()
            for _ in range(10_000):
                last = await sup.update_metrics()
            end, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert oldest.buffered == 16
        assert latest.buffered == 1
        assert oldest.dropped == publishes - 16
        assert latest.dropped == publishes - 1
        assert end - middle < 64 * 1024, (middle, end)
        assert latest.receive_nowait() is last
        snapshot = await sup.update_metrics()
        assert int(snapshot["stream_dropped_total"]) >= 2 * publishes - 17


# -- callers cancelled at random moments --------------------------------------------------


async def test_callers_cancelled_at_random_moments_leave_the_lanes_idle_and_working(
    tmp_path: Path,
) -> None:
    """
    Thread calls (waited for or abandoned), process calls and maps whose callers
    are cancelled at random moments: afterwards no slot is busy, nothing is
    queued, no worker process is left beyond the lane's size, no process call ran
    twice, and both lanes return right results.
    """
    rng = random.Random(SEED + 4)
    directory = str(tmp_path)
    done = {"thread": 0, "process": 0, "map": 0}
    cancelled = 0

    async with Supervisor(settings()) as sup:
        executors = sup.executors

        async def thread_call(delay: float, *, abandon: bool) -> None:
            await executors.run_in_thread(time.sleep, delay, abandon_on_cancel=abandon)
            done["thread"] += 1

        async def process_call(item: int, delay: float) -> None:
            assert await executors.run_in_process(fw.sleepy_square, directory, delay, item) == (
                item * item
            )
            done["process"] += 1

        async def map_call(first: int) -> None:
            results: list[int] = []
            await collect(executors.map_in_processes(fw.square, range(first, first + 300)), results)
            assert results == [item * item for item in range(first, first + 300)]
            done["map"] += 1

        async def caller(index: int) -> None:
            nonlocal cancelled
            kind = rng.choice(["thread", "abandon", "process", "process", "map"])
            deadline = rng.uniform(0.0, 0.12)
            with anyio.move_on_after(deadline) as scope:
                await anyio.sleep(rng.uniform(0.0, 0.05))
                if kind == "thread":
                    await thread_call(rng.uniform(0.0, 0.05), abandon=False)
                elif kind == "abandon":
                    await thread_call(rng.uniform(0.0, 0.05), abandon=True)
                elif kind == "process":
                    await process_call(index, rng.uniform(0.0, 0.05))
                else:
                    await map_call(1000 * index)
            if scope.cancelled_caught:
                cancelled += 1

        with anyio.fail_after(GUARD_SECONDS):
            async with anyio.create_task_group() as tg:
                for index in range(60):
                    tg.start_soon(caller, index)
        metrics = await wait_until_idle(sup)
        assert metrics["thread_lane_busy"] == 0
        assert metrics["process_queue_depth"] == 0
        assert len(live_workers()) <= WORKERS

        for item in range(60):
            assert fw.executions(directory, item) <= 1, item
        assert await executors.run_in_thread(sum, [1, 2, 3]) == 6
        assert await executors.run_in_process(fw.square, 11) == 121
        results: list[int] = []
        await collect(executors.map_in_processes(fw.square, range(100)), results)
        assert results == [item * item for item in range(100)]
    assert cancelled > 0
    assert sum(done.values()) > 0
    assert live_workers() == []
    with pytest.raises(SupervisorClosedError):
        _ = sup.executors
