"""Tests of the local process lane with real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

from resource_supervisor._exceptions import (
    CallTimeoutError,
    OverloadedError,
    SupervisorClosedError,
    UnpicklableError,
    WorkerCrashedError,
)
from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._protocol import RemoteTraceback
from tests import _workers
from tests._leaks import child_pids
from tests._loop_guard import blocking_setup
from tests._settings import lane_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.timeout(60)


async def _until(condition: Callable[[], bool], limit: float = 20.0) -> None:
    """Poll *condition*: worker processes cannot set an event (hang guard: *limit* seconds)."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - the state lives in other processes
            await anyio.sleep(0.01)


def _gone(pid: int) -> bool:
    """True once *pid* has exited (reaped, or a zombie waiting to be)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _call(
    process_lane: ProcessLane, func: Callable[..., object], args: tuple[object, ...]
) -> None:
    """Run a call for a task group; its result is not needed."""
    await process_lane.run(func, args, timeout=None)


async def _crash_among_innocents(
    process_lane: ProcessLane, directory: Path, *, innocents: int
) -> WorkerCrashedError:
    """Run *innocents* recorded calls with one ``os._exit(7)`` among them; check that
    each innocent returned and ran exactly once; return the crash's error."""
    calls = [
        process_lane.run(_workers.record, (str(directory), f"c{i}", i), timeout=None)
        for i in range(innocents)
    ]
    middle = innocents // 2
    calls.insert(middle, process_lane.run(_workers.exit_now, (7,), timeout=None))  # type: ignore[arg-type]
    results = await asyncio.gather(*calls, return_exceptions=True)
    crash = results.pop(middle)
    assert isinstance(crash, WorkerCrashedError)
    assert results == list(range(innocents))
    for i in range(innocents):
        assert (directory / f"c{i}").read_text() == "x\n"
    return crash


async def test_lazy_start_and_no_leak_after_close() -> None:
    """No process before the first call; after aclose no worker and no forkserver remain."""
    before = child_pids()
    lane = ProcessLane(lane_settings(), max_workers=2)
    assert lane.statistics().workers_live == 0
    assert child_pids() == before
    assert await lane.run(_workers.add, (2, 3), timeout=None) == 5
    pids = lane.statistics().worker_pids
    assert pids
    assert set(pids) <= child_pids()
    assert len(child_pids() - before) >= 2  # the worker and the lane's forkserver
    await lane.aclose()
    await lane.aclose()  # idempotent
    assert child_pids() == before
    with pytest.raises(SupervisorClosedError):
        await lane.run(_workers.add, (1, 1), timeout=None)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
# CPython 3.12+ warns when a threaded process forks, which is why 'fork' is deprecated
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
async def test_other_start_methods_keep_the_contract(start_method: str, tmp_path: Path) -> None:
    """
    With spawn or fork workers: results and remote errors come back, a crash fails only
    its own call (innocents run once), the crashed worker is replaced, and nothing is
    left after close.
    """
    before = child_pids()
    with contextlib.ExitStack() as stack:
        if start_method == "fork":  # deprecated (see test_fork_start_method_is_deprecated)
            stack.enter_context(pytest.warns(DeprecationWarning, match="'fork' is deprecated"))
        lane = ProcessLane(lane_settings(start_method=start_method), max_workers=2)
    async with lane:
        assert await lane.run(_workers.add, (2, 3), timeout=None) == 5
        with pytest.raises(KeyError):
            await lane.run(_workers.raise_key_error, ("k",), timeout=None)
        crash = await _crash_among_innocents(lane, tmp_path, innocents=6)
        assert crash.exitcode == 7
        assert await lane.run(_workers.add, (1, 1), timeout=None) == 2
        assert lane.statistics().crashed_total == 1
    assert child_pids() == before


@blocking_setup("lists a worker's descriptors in /proc")
def _pipes_of(pid: int) -> set[str]:
    """The pipes (``pipe:[inode]``) process *pid* holds a descriptor of."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("pipe:"):
                held.add(link)
    return held


@blocking_setup("reads the slots' pipes with fstat")
def _foreign_pipes(lane: ProcessLane) -> dict[int, set[str]]:
    """For each worker: the pipes of *other* slots it holds a descriptor of."""
    own = {
        slot.pid: {f"pipe:[{os.fstat(fd).st_ino}]" for fd in (slot.reader_fd, slot.writer_fd)}
        for slot in lane._slots
    }
    everyone = set().union(*own.values())
    return {pid: _pipes_of(pid) & (everyone - mine) for pid, mine in own.items()}


# CPython 3.12+ warns when a threaded process forks, which is why 'fork' is deprecated
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:start_method 'fork' is deprecated:DeprecationWarning")
async def test_forked_workers_started_together_hold_no_other_slots_pipe() -> None:
    """
    With 'fork', workers that start at the same time each hold only their own slot's
    pipes: a worker holding a copy of another slot's result pipe would keep that pipe
    open after the other worker died, and the lane would never see the crash.
    """
    async with ProcessLane(lane_settings(start_method="fork"), max_workers=4) as lane:
        pids = await asyncio.gather(
            *(lane.run(_workers.sleep_pid, (0.3,), timeout=None) for _ in range(8))
        )
        assert len(set(pids)) == 4  # four workers started together
        assert _foreign_pipes(lane) == {pid: set() for pid in set(pids)}
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)  # its crash is seen: the next calls still run
        await _until(lambda: victim not in lane.statistics().worker_pids)
        assert await lane.run(_workers.add, (1, 1), timeout=None) == 2


async def test_many_concurrent_calls_each_answered_once(process_lane: ProcessLane) -> None:
    """Concurrent callers (batched onto two workers) each get their own result."""
    results = await asyncio.gather(
        *(process_lane.run(_workers.square, (i,), timeout=None) for i in range(60))
    )
    assert results == [i * i for i in range(60)]
    stats = process_lane.statistics()
    assert stats.completed_total == 60
    assert stats.workers_live <= 2


async def test_remote_exception_keeps_type_and_traceback(process_lane: ProcessLane) -> None:
    """A KeyError raised in the worker stays a KeyError, with the worker's traceback as cause."""
    with pytest.raises(KeyError) as info:
        await process_lane.run(_workers.raise_key_error, ("missing",), timeout=None)
    assert info.value.args == ("missing",)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_key_error" in str(info.value.__cause__)
    assert process_lane.statistics().failed_total == 1


async def test_unpicklable_fails_fast_without_starting_a_process() -> None:
    """A lambda or a lock argument raises UnpicklableError and starts no process."""
    before = child_pids()
    async with ProcessLane(lane_settings(), max_workers=2) as lane:
        with pytest.raises(UnpicklableError, match="the function"):
            await lane.run(lambda: None, (), timeout=None)
        with pytest.raises(UnpicklableError, match=r"argument 2 \(type _thread.lock\)"):
            await lane.run(_workers.add, (1, threading.Lock()), timeout=None)
        assert child_pids() == before
        assert lane.statistics().workers_live == 0


async def test_big_result_returns_through_the_executor(process_lane: ProcessLane) -> None:
    """A result above the pipe frame limit arrives whole, and later calls still run."""
    results = await asyncio.gather(
        process_lane.run(_workers.big_result, (200_000,), timeout=None),
        *(process_lane.run(_workers.square, (i,), timeout=None) for i in range(10)),
    )
    assert results[0] == b"x" * 200_000
    assert results[1:] == [i * i for i in range(10)]


async def test_calls_bigger_than_the_call_pipe_arrive_whole(process_lane: ProcessLane) -> None:
    """
    Calls pickled on the loop but bigger than a pipe's buffer (64 KiB) are written
    to the call pipe as the worker drains it, and each arrives whole, alone or batched.
    """
    import zlib

    from resource_supervisor.broker._pickling import OFFLOAD_BYTES, estimate_call_bytes, pickle_call

    blobs = [os.urandom(100 * 1024) for _ in range(8)]
    assert estimate_call_bytes(_workers.checksum, (blobs[0],)) <= OFFLOAD_BYTES  # on the loop
    assert len(pickle_call(_workers.checksum, (blobs[0],))) > 65536
    assert await process_lane.run(_workers.checksum, (blobs[0],), timeout=None) == (
        "bytes", len(blobs[0]), zlib.crc32(blobs[0]),
    )  # fmt: skip
    results = await asyncio.gather(
        *(process_lane.run(_workers.checksum, (blob,), timeout=None) for blob in blobs)
    )
    assert results == [("bytes", len(b), zlib.crc32(b)) for b in blobs]


async def test_worker_serves_again_after_an_idle_spell_and_a_big_result() -> None:
    """
    A worker's serving loop returns when idle, and a big result travels on the same
    pipe as the small ones; the next calls still run on the same worker, with no
    crash counted.
    """
    from resource_supervisor.broker._local._worker import SERVE_IDLE_SECONDS

    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        first = await lane.run(_workers.pid, (), timeout=None)
        await anyio.sleep(3 * SERVE_IDLE_SECONDS)  # not a race: any wait must pass
        assert await lane.run(_workers.pid, (), timeout=None) == first
        assert await lane.run(_workers.big_result, (100_000,), timeout=None) == b"x" * 100_000
        assert await lane.run(_workers.pid, (), timeout=None) == first
        stats = lane.statistics()
        assert stats.crashed_total == 0
        assert stats.completed_total == 4


async def test_crash_fails_only_the_running_call(process_lane: ProcessLane, tmp_path: Path) -> None:
    """os._exit in a worker fails that call with its exit code; every innocent runs exactly once."""
    crash = await _crash_among_innocents(process_lane, tmp_path, innocents=12)
    assert crash.exitcode == 7
    assert crash.function == "tests._workers.exit_now"
    stats = process_lane.statistics()
    assert stats.crashed_total == 1
    assert await process_lane.run(_workers.add, (1, 1), timeout=None) == 2


async def test_sigkill_from_outside(process_lane: ProcessLane, tmp_path: Path) -> None:
    """A worker SIGKILLed mid-call fails that call with the signal; queued calls still run once."""
    gate = tmp_path / "gate"
    async with anyio.create_task_group() as tg:
        outcome: dict[str, object] = {}

        async def victim() -> None:
            try:
                await process_lane.run(_workers.wait_for_file, (str(gate),), timeout=None)
            except WorkerCrashedError as exc:
                outcome["error"] = exc

        tg.start_soon(victim)
        await _until(lambda: Path(f"{gate}.started").exists())
        innocents = [
            process_lane.run(_workers.record, (str(tmp_path), f"i{i}", i), timeout=None)
            for i in range(6)
        ]
        pending = asyncio.gather(*innocents)
        os.kill(int(Path(f"{gate}.started").read_text()), signal.SIGKILL)  # noqa: ASYNC240
        assert await pending == list(range(6))
    error = outcome["error"]
    assert isinstance(error, WorkerCrashedError)
    assert error.signal == signal.SIGKILL
    for i in range(6):
        assert (tmp_path / f"i{i}").read_text() == "x\n"


async def test_worker_killed_mid_result_is_reaped() -> None:
    """
    A worker killed halfway through sending a big result on the executor's own
    channel fails that call with the signal once it is reaped (the executor reads
    end of file, not a message that never ends); the lane goes on with a new worker.
    """
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        victim = await lane.run(_workers.pid, (), timeout=None)
        with anyio.fail_after(20), pytest.raises(WorkerCrashedError) as info:  # hang guard
            await lane.run(_workers.die_mid_result, (), timeout=None)
        assert info.value.signal == signal.SIGKILL
        assert await lane.run(_workers.pid, (), timeout=None) != victim
        assert lane.statistics().crashed_total == 1


async def test_timeout_kills_and_replaces_only_that_worker(process_lane: ProcessLane) -> None:
    """timeout= raises CallTimeoutError, kills the call's worker, and the process_lane goes on."""
    first = await process_lane.run(_workers.pid, (), timeout=None)
    with pytest.raises(CallTimeoutError):
        await process_lane.run(_workers.sleep, (30.0,), timeout=0.5)
    await _until(lambda: process_lane.statistics().workers_busy == 0)
    assert await process_lane.run(_workers.add, (2, 2), timeout=5.0) == 4
    stats = process_lane.statistics()
    assert stats.timeouts_total == 1
    assert stats.crashed_total == 0
    assert first in stats.worker_pids or len(stats.worker_pids) >= 1


async def test_cancelled_queued_call_never_runs(tmp_path: Path) -> None:
    """A call cancelled while queued behind a busy worker is removed and never runs."""
    gate = tmp_path / "gate"
    async with ProcessLane(lane_settings(), max_workers=1) as lane, anyio.create_task_group() as tg:
        tg.start_soon(_call, lane, _workers.wait_for_file, (str(gate),))
        await _until(lambda: Path(f"{gate}.started").exists())
        scope = anyio.CancelScope()

        async def queued() -> None:
            with scope:
                await lane.run(_workers.record, (str(tmp_path), "late", 1), timeout=None)

        tg.start_soon(queued)
        await _until(lambda: lane.statistics().queue_depth == 1)
        scope.cancel()
        await _until(lambda: lane.statistics().queue_depth == 0)
        gate.write_text("go")
    assert not (tmp_path / "late").exists()


async def test_cancelled_running_call_kills_its_worker(tmp_path: Path) -> None:
    """Cancelling a running call kills and replaces its worker; it is not counted as a crash."""
    gate = tmp_path / "gate"
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call, lane, _workers.wait_for_file, (str(gate),))
            await _until(lambda: Path(f"{gate}.started").exists())
            victim = int(Path(f"{gate}.started").read_text())  # noqa: ASYNC240
            tg.cancel_scope.cancel()
        await _until(lambda: _gone(victim))
        assert await lane.run(_workers.pid, (), timeout=None) != victim
        assert lane.statistics().crashed_total == 0


async def test_idle_workers_retire_and_children_follow() -> None:
    """Workers idle past idle_timeout retire; psutil children and statistics agree."""
    async with ProcessLane(lane_settings(idle_timeout=0.3), max_workers=2) as lane:
        pids = set(
            await asyncio.gather(
                *(lane.run(_workers.sleep_pid, (0.2,), timeout=None) for _ in range(4))
            )
        )
        assert len(pids) == 2
        assert pids <= child_pids()
        assert set(lane.statistics().worker_pids) == pids
        await _until(lambda: lane.statistics().workers_live == 0)
        await _until(lambda: not (pids & child_pids()))


async def test_critical_shrinks_refuses_and_recovers(tmp_path: Path) -> None:
    """At CRITICAL the lane keeps one worker and refuses beyond queue_limit; NORMAL admits again."""
    gate = tmp_path / "gate"
    settings = lane_settings(queue_limit=1)
    async with ProcessLane(settings, max_workers=2, settle_seconds=0.0) as lane:
        await asyncio.gather(*(lane.run(_workers.sleep, (0.2,), timeout=None) for _ in range(2)))
        assert lane.statistics().workers_live == 2
        lane.set_pressure(PressureLevel.CRITICAL)
        await _until(lambda: lane.statistics().workers_live == 1)
        assert len(child_pids() & set(lane.statistics().worker_pids)) == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call, lane, _workers.wait_for_file, (str(gate),))
            await _until(lambda: Path(f"{gate}.started").exists())
            tg.start_soon(_call, lane, _workers.add, (1, 2))  # queued: 0 < limit
            await _until(lambda: lane.statistics().queue_depth == 1)
            with pytest.raises(OverloadedError):
                await lane.run(_workers.add, (1, 2), timeout=None)
            assert lane.statistics().refused_total == 1
            lane.set_pressure(PressureLevel.NORMAL)
            tg.start_soon(_call, lane, _workers.add, (3, 4))  # admitted again
            await _until(lambda: lane.statistics().workers_live == 2)
            gate.write_text("go")
        assert lane.statistics().completed_total >= 5


async def test_recycle_after_max_tasks() -> None:
    """A worker retires after max_tasks_per_worker calls and is counted as recycled."""
    async with ProcessLane(lane_settings(max_tasks_per_worker=2), max_workers=1) as lane:
        pids = [await lane.run(_workers.pid, (), timeout=None) for _ in range(4)]
        assert pids[0] == pids[1]
        assert pids[2] == pids[3]
        assert pids[1] != pids[2]
        assert lane.statistics().recycled_total >= 1


async def test_recycle_above_max_rss() -> None:
    """A worker whose RSS exceeds worker_max_rss_bytes retires between calls."""
    limit = 120 * 1024 * 1024
    async with ProcessLane(lane_settings(worker_max_rss_bytes=limit), max_workers=1) as lane:
        fat = await lane.run(_workers.allocate, (limit + 20 * 1024 * 1024,), timeout=None)
        await _until(lambda: lane.statistics().recycled_total == 1)
        assert await lane.run(_workers.pid, (), timeout=None) != fat


async def test_close_fails_waiting_calls(tmp_path: Path) -> None:
    """aclose makes running and queued calls raise SupervisorClosedError, and reaps the workers."""
    before = child_pids()
    gate = tmp_path / "gate"
    lane = ProcessLane(lane_settings(), max_workers=1)
    errors: list[BaseException] = []

    async def call(func: Callable[..., object], *args: object) -> None:
        try:
            await lane.run(func, args, timeout=None)
        except SupervisorClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, _workers.wait_for_file, str(gate))
        await _until(lambda: Path(f"{gate}.started").exists())
        tg.start_soon(call, _workers.add, 1, 2)
        await _until(lambda: lane.statistics().queue_depth == 1)
        await lane.aclose()
    assert len(errors) == 2
    assert child_pids() == before


async def test_metrics_names(process_lane: ProcessLane) -> None:
    """metrics() has every process_* key and names the backend."""
    await process_lane.run(_workers.add, (1, 1), timeout=None)
    metrics = process_lane.metrics()
    assert metrics["process_lane_backend"] == "local"
    assert metrics["process_completed_total"] == 1
    assert {
        "process_workers_live", "process_workers_target", "process_workers_busy",
        "process_queue_depth", "process_failed_total", "process_crashed_total",
        "process_recycled_total", "process_refused_total", "process_timeouts_total",
    } <= set(metrics)  # fmt: skip


class _LagProbe:
    """The worst lateness of a 1 ms ticker on the event loop while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - before - 0.001)


async def _worst_lag(work: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    """Run *work* under a lag probe; return the probe's worst gap and the work's result."""
    probe = _LagProbe()
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe.tick)
        await asyncio.sleep(0.01)
        result = await work()
        await asyncio.sleep(0.01)  # let the ticker see the end of a stall
        tg.cancel_scope.cancel()
    return probe.worst, result


async def test_big_argument_is_pickled_off_the_loop(process_lane: ProcessLane) -> None:
    """
    A 64 MiB argument is pickled off the event loop: a 1 ms ticker's worst gap while
    the call runs stays well below the gap that pickling it on the loop causes, and
    the worker receives the argument whole (bytes and bytearray alike).
    """
    import pickle
    import zlib

    data = os.urandom(1024) * (64 * 1024)
    expected = ("bytes", len(data), zlib.crc32(data))
    assert await process_lane.run(_workers.add, (1, 1), timeout=None) == 2  # workers started

    async def on_loop() -> object:
        return len(pickle.dumps((_workers.checksum, (data,)), protocol=5))

    async def in_lane() -> object:
        return await process_lane.run(_workers.checksum, (data,), timeout=None)

    in_loop_gap, _ = await _worst_lag(on_loop)
    lane_gaps = []
    for _ in range(3):  # the best of three: other processes on the machine add noise
        gap, result = await _worst_lag(in_lane)
        assert result == expected
        lane_gaps.append(gap)
    assert min(lane_gaps) < in_loop_gap / 2, (lane_gaps, in_loop_gap)
    mutable = bytearray(data[: 4 * 1024 * 1024])
    result = await process_lane.run(_workers.checksum, (mutable,), timeout=None)
    assert result == ("bytearray", len(mutable), zlib.crc32(mutable))
    assert process_lane.statistics().completed_total == 5
