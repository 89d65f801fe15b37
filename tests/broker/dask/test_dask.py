"""Tests of the Dask lane against real Dask clusters on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import psutil
import pytest

from resource_supervisor._config import ConcurrencySettings, DaskSettings
from resource_supervisor._exceptions import (
    CallTimeoutError,
    ClusterConnectionLostError,
    ConfigError,
    OverloadedError,
    SupervisorClosedError,
    UnpicklableError,
    WorkerCrashedError,
)
from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker._dask._lane import DaskLane
from tests import _dask_workers as w
from tests._leaks import child_pids
from tests._loop_guard import blocking_setup
from tests._settings import dask_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]
DASK = Path(sys.executable).with_name("dask")


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """After the test, no child process or listening socket it made is left."""
    children, listening = child_pids(), _listening()
    yield
    deadline = time.monotonic() + 10.0  # hang guard: nannies reap their workers
    while child_pids() - children and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child_pids() - children == set()
    assert _listening() - listening == set()


@pytest.fixture
async def lane(no_leaks: None) -> AsyncIterator[DaskLane]:
    """An owned two-worker LocalCluster, one thread per worker."""
    async with DaskLane(dask_settings(poll_interval=0.2), max_workers=2) as started:
        yield started


async def _run(lane: DaskLane, func: Callable[..., object], args: tuple[object, ...]) -> None:
    await lane.run(func, args, timeout=None)


async def _wait_for(directory: Path, name: str, n: int = 1) -> None:
    """Wait (hang guard 20 s) until *name* was recorded *n* times."""
    with anyio.fail_after(20):
        while w.count(directory, name) < n:  # noqa: ASYNC110 - another process writes it
            await anyio.sleep(0.01)


async def test_round_trip_and_metrics(lane: DaskLane) -> None:
    """A call returns its result; metrics show the owned cluster and at-most-once."""
    assert await lane.run(w.add, (2, 3), timeout=None) == 5
    stats = lane.metrics()
    assert stats["process_lane_backend"] == "dask"
    assert stats["process_lane_delivery"] == "at-most-once"
    assert stats["dask_workers"] == 2
    assert stats["dask_threads"] == 2
    assert stats["dask_memory_limit_bytes"] == 2 * 600 * MiB
    assert stats["process_completed_total"] == 1
    assert stats["process_workers_target"] == 2
    assert lane.cluster_level() == PressureLevel.NORMAL


async def test_cluster_figures_in_snapshots_and_prometheus(no_leaks: None) -> None:
    """A supervisor on the Dask backend puts the cluster's figures in every snapshot,
    and its Prometheus collector exports them."""
    from prometheus_client import CollectorRegistry, generate_latest

    from resource_supervisor import Supervisor
    from resource_supervisor._config import build_settings
    from resource_supervisor.integrations.prometheus import register

    settings = build_settings(
        monitoring_enabled=False,
        concurrency={
            "backend": "dask",
            "dask": {"n_workers": 2, "memory_limit_bytes": 600 * MiB, "poll_interval": 0.2},
        },
    )
    async with Supervisor(settings) as sup:
        assert await sup.executors.run_in_process(w.add, 1, 2) == 3
        snap = await sup.update_metrics()
        assert snap["process_lane_backend"] == "dask"
        assert snap["dask_workers"] == 2
        assert snap["dask_threads"] == 2
        assert snap["dask_workers_paused"] == 0
        assert snap["dask_memory_limit_bytes"] == 2 * 600 * MiB
        assert float(snap["dask_memory_used_bytes"]) > 0
        assert snap["dask_queue_depth"] == 0
        registry = CollectorRegistry()
        register(sup, registry)
        text = generate_latest(registry).decode()
    for name in ("dask_workers 2.0", "dask_threads 2.0", "dask_memory_limit_bytes"):
        assert f"resource_supervisor_{name}" in text
    assert 'process_lane_backend="dask"' in text


async def test_remote_key_error_keeps_its_type(lane: DaskLane) -> None:
    """A KeyError raised on a worker arrives as KeyError, with its argument."""
    with pytest.raises(KeyError) as info:
        await lane.run(w.raise_key_error, ("missing",), timeout=None)
    assert type(info.value) is KeyError
    assert info.value.args == ("missing",)
    assert lane.metrics()["process_failed_total"] == 1


async def test_unpicklable_input_fails_before_submitting(lane: DaskLane) -> None:
    """
    A lambda or an unpicklable argument raises UnpicklableError before the first
    await: even in an already-cancelled scope, so nothing was submitted.
    """
    with anyio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(UnpicklableError):
            await lane.run(lambda: 1, (), timeout=None)
        with pytest.raises(UnpicklableError, match="argument 2"):
            await lane.run(w.add, (1, threading.Lock()), timeout=None)
    stats = lane.metrics()
    assert stats["process_completed_total"] == stats["process_failed_total"] == 0


async def test_crash_fails_only_that_call(lane: DaskLane, tmp_path: Path) -> None:
    """
    A worker that dies fails exactly its call with WorkerCrashedError, which ran once;
    three concurrent bystanders each run once and succeed; the cluster recovers.
    """
    directory = str(tmp_path)
    results: dict[str, object] = {}

    async def call(name: str, crash: bool) -> None:
        try:
            if crash:
                await lane.run(w.record_and_crash, (directory, name), timeout=None)
            else:
                results[name] = await lane.run(
                    w.record_and_sleep, (directory, name, 0.3), timeout=None
                )
        except WorkerCrashedError as exc:
            results[name] = exc

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "bystander0", False)
            await _wait_for(tmp_path, "bystander0")
            tg.start_soon(call, "crasher", True)
            tg.start_soon(call, "bystander1", False)
            tg.start_soon(call, "bystander2", False)
    assert isinstance(results["crasher"], WorkerCrashedError)
    assert w.count(tmp_path, "crasher") == 1
    for name in ("bystander0", "bystander1", "bystander2"):
        assert results[name] == name
        assert w.count(tmp_path, name) == 1
    assert lane.metrics()["process_crashed_total"] == 1
    assert await lane.run(w.add, (1, 1), timeout=None) == 2


async def test_memory_kill_is_a_crash(no_leaks: None) -> None:
    """A call that grows past its worker's memory limit is killed: WorkerCrashedError."""
    settings = dask_settings(n_workers=1, memory_limit_bytes=300 * MiB, poll_interval=0.2)
    async with DaskLane(settings, max_workers=1) as lane:
        with anyio.fail_after(30), pytest.raises(WorkerCrashedError):
            await lane.run(w.grow_memory, (25 * MiB, 40, 0.05), timeout=None)
        assert lane.metrics()["process_crashed_total"] == 1
        assert await lane.run(w.add, (2, 2), timeout=None) == 4


async def test_cancelled_running_call_keeps_its_slot_until_it_ends(
    lane: DaskLane, tmp_path: Path
) -> None:
    """
    Cancelling a caller whose call runs cancels its Dask future, but the call finishes
    on its worker: its slot stays taken until then, and a call made meanwhile runs on
    the other worker instead of waiting behind it.
    """
    release = tmp_path / "release"
    async with anyio.create_task_group() as tg:
        tg.start_soon(_run, lane, w.block_until, (str(tmp_path), "blocked", str(release)))
        await _wait_for(tmp_path, "blocked")
        assert lane.metrics()["process_in_flight"] == 1
        tg.cancel_scope.cancel()
    assert lane.metrics()["process_in_flight"] == 1  # still running on its worker
    for i in range(3):  # each would wait 20 s behind the blocked call on its worker
        with anyio.fail_after(5):
            assert await lane.run(w.add, (i, 1), timeout=None) == i + 1
    assert w.count(tmp_path, "blocked-done") == 0
    release.touch()
    await _wait_for(tmp_path, "blocked-done")
    with anyio.fail_after(10):
        while lane.metrics()["process_in_flight"] != 0:  # noqa: ASYNC110 - polled worker
            await anyio.sleep(0.01)
    assert lane.metrics()["process_completed_total"] == 3


async def test_timeout_kills_the_owned_worker(lane: DaskLane, tmp_path: Path) -> None:
    """
    A call past its timeout raises CallTimeoutError; on an owned cluster its worker is
    killed (the call never finishes) and the lane keeps serving.
    """
    release = tmp_path / "release"
    args = (str(tmp_path), "slow", str(release))
    with pytest.raises(CallTimeoutError):
        await lane.run(w.block_until, args, timeout=0.5)
    release.touch()
    assert await lane.run(w.add, (1, 2), timeout=None) == 3
    assert await lane.run(w.add, (2, 2), timeout=None) == 4
    assert w.count(tmp_path, "slow") == 1
    assert w.count(tmp_path, "slow-done") == 0


async def test_scheduler_in_subprocess(no_leaks: None) -> None:
    """scheduler_in_subprocess=True runs calls; closing leaves no process or port."""
    settings = dask_settings(n_workers=1, scheduler_in_subprocess=True)
    async with DaskLane(settings, max_workers=1) as lane:
        assert lane.metrics()["dask_workers"] == 1
        assert await lane.run(w.add, (3, 4), timeout=None) == 7


async def test_ordered_map_reads_items_lazily(lane: DaskLane) -> None:
    """An ordered map yields in input order and never pulls more than its window."""
    pulled: list[int] = []

    def items() -> Iterator[int]:
        for i in range(40):
            pulled.append(i)
            yield i

    results: list[int] = []
    async for value in lane.map(w.square, items(), ordered=True, chunksize=2, max_in_flight=2):
        if not results:
            assert len(pulled) <= 4  # two chunks of two in flight, nothing read ahead
        results.append(value)
    assert results == [i * i for i in range(40)]


async def test_unordered_map_with_growing_chunks(lane: DaskLane) -> None:
    """An unordered map with automatic chunks returns every result once."""
    stream = lane.map(w.square, range(500), ordered=False, chunksize=None, max_in_flight=None)
    results = [value async for value in stream]
    assert sorted(results) == [i * i for i in range(500)]
    assert int(lane.metrics()["process_completed_total"]) < 100  # chunks grew past one item


async def test_map_window_submits_at_most_the_cluster_threads(lane: DaskLane) -> None:
    """
    The default map window holds twice the cluster's threads of chunks, but the
    scheduler never has more than the threads of them at once (so a worker death
    fails only the chunk it ran), and both workers are used at once. (How much of
    the time both are busy is throughput: the Dask benchmark measures it.)
    """
    handle = lane._handle
    assert handle is not None
    client: Any = handle.client
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(await client.run_on_scheduler(w.tasks_on_scheduler))
            await anyio.sleep(0.005)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            stream = lane.map(
                w.sleep_and_return, [0.05] * 16, ordered=True, chunksize=1, max_in_flight=None
            )
            assert [value async for value in stream] == [0.05] * 16
            tg.cancel_scope.cancel()
    assert max(seen) == 2


async def test_map_error_is_raised_bare(lane: DaskLane) -> None:
    """A remote error inside a map chunk is raised as itself, not as an ExceptionGroup."""
    with pytest.raises(KeyError):
        async for _ in lane.map(
            w.square_or_fail, range(30), ordered=True, chunksize=4, max_in_flight=2
        ):
            pass


async def test_critical_refuses_beyond_queue_limit(tmp_path: Path, no_leaks: None) -> None:
    """
    At CRITICAL with queue_limit=0 a call that would have to wait is refused with
    OverloadedError; a call with a free slot is still admitted.
    """
    settings = ConcurrencySettings(
        backend="dask",
        queue_limit=0,
        dask=DaskSettings(n_workers=2, memory_limit_bytes=600 * MiB, poll_interval=0.2),
    )
    release = tmp_path / "release"
    async with DaskLane(settings, max_workers=2) as lane:
        lane.set_pressure(PressureLevel.CRITICAL)
        async with anyio.create_task_group() as tg:
            for name in ("a", "b"):
                tg.start_soon(_run, lane, w.block_until, (str(tmp_path), name, str(release)))
                await _wait_for(tmp_path, name)
            with pytest.raises(OverloadedError) as info:
                await lane.run(w.add, (1, 2), timeout=None)
            assert info.value.queue_limit == 0
            assert lane.metrics()["process_refused_total"] == 1
            release.touch()
        lane.set_pressure(PressureLevel.NORMAL)
        assert await lane.run(w.add, (1, 2), timeout=None) == 3


async def test_retries_and_closed_lane(no_leaks: None) -> None:
    """
    dask.retries > 0 is reported as at-least-once; after aclose() (idempotent) a
    call raises SupervisorClosedError.
    """
    lane = DaskLane(dask_settings(n_workers=1, retries=1), max_workers=1)
    async with lane:
        assert lane.metrics()["process_lane_delivery"] == "at-least-once"
    await lane.aclose()
    with pytest.raises(SupervisorClosedError):
        await lane.run(w.add, (1, 2), timeout=None)


async def test_unreachable_address_is_a_config_error() -> None:
    """An address where no scheduler listens raises ConfigError naming dask.address."""
    with socket_reserved() as port:
        settings = dask_settings(address=f"tcp://127.0.0.1:{port}", connect_timeout=0.5)
        with pytest.raises(ConfigError, match=r"concurrency\.dask\.address"):
            async with DaskLane(settings, max_workers=1):
                pass


class socket_reserved:  # noqa: N801 - used as a context manager
    """A port bound (not listening) for the duration, so nothing answers on it."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


# -- connect mode -------------------------------------------------------------------


@blocking_setup("starts the scheduler or a worker process")
def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(DASK), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@blocking_setup("kills a process tree through psutil")
def _kill_tree(*processes: subprocess.Popen[bytes]) -> None:
    """Kill the processes and all their descendants, then reap them."""
    family: list[psutil.Process] = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            family.extend([parent, *parent.children(recursive=True)])
        except psutil.NoSuchProcess:
            pass
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)
    for process in processes:
        process.wait(10)


@pytest.fixture(scope="module")
def external_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """
    A scheduler (allowed-failures 0) and two one-thread workers started as separate
    processes on 127.0.0.1; yields the scheduler file; killed at the end.
    """
    scheduler_file = tmp_path_factory.mktemp("dask") / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
        "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
    }
    common = ["--host", "127.0.0.1", "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    processes = [_start(["scheduler", "--port", "0", *common], env)]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        processes.extend(_start(["worker", "--nthreads", "1", *common], env) for _ in range(2))
        yield scheduler_file
    finally:
        _kill_tree(*processes)


async def test_connect_mode_leaves_the_scheduler_running(
    external_scheduler: Path, tmp_path: Path
) -> None:
    """
    With scheduler_file the lane connects, runs calls on the external workers, reports
    at-most-once (the scheduler's allowed-failures is 0), and aclose() leaves the
    scheduler and its workers running.
    """
    settings = dask_settings(scheduler_file=str(external_scheduler), poll_interval=0.2)
    async with DaskLane(settings, max_workers=1) as lane:
        with anyio.fail_after(30):
            while int(lane.metrics()["dask_workers"]) < 2:  # noqa: ASYNC110 - polled figures
                await anyio.sleep(0.05)
        assert await lane.run(w.add, (20, 22), timeout=None) == 42
        handle = lane._handle
        assert handle is not None
        client: Any = handle.client
        intervals = await client.run_on_scheduler(w.stream_intervals)
        assert set(intervals.values()) == {0.005}  # a shared scheduler is not retuned
        stats = lane.metrics()
        assert stats["process_lane_delivery"] == "at-most-once"
        assert stats["dask_threads"] == 2
    settings = dask_settings(scheduler_file=str(external_scheduler))
    async with DaskLane(settings, max_workers=1) as again:
        assert await again.run(w.add, (1, 1), timeout=None) == 2
        assert again.metrics()["dask_workers"] == 2


async def test_lost_scheduler_fails_the_running_call(tmp_path: Path, no_leaks: None) -> None:
    """
    Connected to a scheduler that dies mid-call, the call fails with
    ClusterConnectionLostError (a WorkerCrashedError; whether it ran is unknown), and
    the lane still closes within its close timeout.
    """
    scheduler_file = tmp_path / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
    }
    common = ["--host", "127.0.0.1", "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    scheduler = _start(["scheduler", "--port", "0", *common], env)
    worker: subprocess.Popen[bytes] | None = None
    try:
        with anyio.fail_after(30):
            while not await anyio.Path(scheduler_file).exists():  # noqa: ASYNC110 - another process writes it
                await anyio.sleep(0.05)
        worker = _start(["worker", "--nthreads", "1", *common], env)
        settings = dask_settings(scheduler_file=str(scheduler_file), close_timeout=3.0)
        async with DaskLane(settings, max_workers=1) as lane:
            with anyio.fail_after(30):
                while int(lane.metrics()["dask_workers"]) < 1:  # noqa: ASYNC110 - polled
                    await anyio.sleep(0.05)
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await lane.run(
                        w.block_until,
                        (str(tmp_path), "stranded", str(tmp_path / "never")),
                        timeout=None,
                    )
                except Exception as exc:  # noqa: BLE001 - the error is the result
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await _wait_for(tmp_path, "stranded")
                _kill_tree(scheduler)
                with anyio.fail_after(30):
                    while not outcome:  # noqa: ASYNC110 - set by the call above
                        await anyio.sleep(0.01)
            assert isinstance(outcome[0], ClusterConnectionLostError)
            assert isinstance(outcome[0], WorkerCrashedError)
            assert lane.metrics()["process_crashed_total"] == 1
    finally:
        _kill_tree(scheduler, *([worker] if worker is not None else []))


@pytest.fixture(scope="module")
def retrying_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scheduler with Dask's default allowed-failures (3), no workers; killed at the end."""
    scheduler_file = tmp_path_factory.mktemp("dask") / "scheduler.json"
    args = ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    process = _start([*args, "--scheduler-file", str(scheduler_file)], dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield scheduler_file
    finally:
        _kill_tree(process)


async def test_connect_mode_warns_when_scheduler_retries(retrying_scheduler: Path) -> None:
    """
    Connected to a scheduler whose allowed-failures is above 0, a lane asked for
    at-most-once warns and reports at-least-once.
    """
    settings = dask_settings(scheduler_file=str(retrying_scheduler))
    with pytest.warns(RuntimeWarning, match="allowed-failures is 3"):
        lane = await DaskLane(settings, max_workers=1).__aenter__()
    try:
        assert lane.metrics()["process_lane_delivery"] == "at-least-once"
    finally:
        await lane.aclose()


async def test_map_refuses_an_unpicklable_item(lane: DaskLane) -> None:
    """An item stdlib pickle refuses raises UnpicklableError; nothing is submitted."""
    items: list[int] = [threading.Lock()]  # type: ignore[list-item]
    with pytest.raises(UnpicklableError):
        async for _ in lane.map(w.square, items, ordered=True, chunksize=1, max_in_flight=1):
            pass
    assert lane.metrics()["process_completed_total"] == 0
