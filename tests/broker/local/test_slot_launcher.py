"""Tests of starting and stopping process-lane slots, with real worker processes."""

from __future__ import annotations

import asyncio
import os
import warnings

import anyio
import psutil
import pytest

from resource_supervisor.broker._local import _protocol, _worker
from resource_supervisor.broker._local._launcher import SlotLauncher, kill_worker, stop_reading
from resource_supervisor.broker._local._slot import Slot, SlotState, read_frames, write_calls
from resource_supervisor.broker._pickling import pickle_call
from tests import _workers
from tests._leaks import child_pids

pytestmark = pytest.mark.timeout(60)

PRELOAD = ("__main__", _worker.__name__)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
async def test_open_and_shutdown_leave_nothing_behind(start_method: str) -> None:
    """A slot opens with a live worker; shutdown reaps it and closes the pipe; aclose stops all."""
    before = child_pids()
    launcher = SlotLauncher(start_method, PRELOAD, threads=2)
    slot = Slot()
    await launcher.open(slot)
    assert psutil.pid_exists(slot.pid)
    assert slot.pid in child_pids()
    assert slot.reader_fd >= 0
    loop = asyncio.get_running_loop()
    loop.add_reader(slot.reader_fd, lambda: None)
    await launcher.shutdown(slot, loop)
    assert slot.executor is None
    assert slot.reader_fd == -1
    await launcher.shutdown(slot, loop)  # a second call has nothing left to do
    await launcher.aclose()
    await launcher.aclose()  # idempotent
    assert child_pids() == before


async def test_killed_worker_is_reaped_by_shutdown() -> None:
    """kill_worker ends the worker at once; shutdown still reaps it; a gone pid is fine."""
    before = child_pids()
    launcher = SlotLauncher("forkserver", PRELOAD, threads=2)
    slot = Slot()
    await launcher.open(slot)
    kill_worker(slot.pid)
    await launcher.shutdown(slot, None)
    assert slot.process is not None
    assert slot.process.exitcode == -9
    kill_worker(slot.pid)  # already gone: no error
    await launcher.aclose()
    assert child_pids() == before


async def test_shutdown_completes_when_cancelled() -> None:
    """A shutdown cancelled while it reaps the worker still reaps it (shielded)."""
    before = child_pids()
    launcher = SlotLauncher("forkserver", PRELOAD, threads=2)
    slot = Slot()
    await launcher.open(slot)
    async with anyio.create_task_group() as tg:
        tg.start_soon(launcher.shutdown, slot, None)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert slot.reader_fd == -1
    await launcher.aclose()
    assert child_pids() == before


async def test_a_serving_worker_runs_batches_and_stops_on_shutdown() -> None:
    """
    A batch written to the call pipe runs in the worker's serving loop and its
    outcome arrives on the result pipe; shutdown ends the loop with a stop frame,
    so the worker exits by itself (code 0, not killed).
    """
    before = child_pids()
    launcher = SlotLauncher("forkserver", PRELOAD, threads=2)
    slot = Slot()
    await launcher.open(slot)
    assert slot.executor is not None
    serving = slot.executor.submit(_worker.serve)
    slot.outgoing += _protocol.encode_batch([(0, pickle_call(_workers.add, (2, 3)))])
    assert write_calls(slot)
    frames: list[tuple[int, bytes]] = []
    with anyio.fail_after(20):  # hang guard: the worker lives in another process
        while not frames:
            frames += read_frames(slot)[0]
            await anyio.sleep(0.005)
    (seq, status, _, value), *_ = [_protocol.decode_frame(*f) for f in frames]
    assert (seq, status, value) == (0, 1, 5)
    assert slot.progress is not None
    assert slot.progress.value == 0
    process = slot.process
    await launcher.shutdown(slot, asyncio.get_running_loop())
    assert serving.result(timeout=0) is None
    assert slot.writer_fd == -1
    assert process is not None
    assert process.exitcode == 0
    await launcher.aclose()
    assert child_pids() == before


def test_stop_reading_without_a_loop_or_pipe_is_a_no_op() -> None:
    """A never-started lane (no loop) or a slot without a pipe has nothing to unwatch."""
    slot = Slot(state=SlotState.DEAD)
    stop_reading(None, slot)
    read_end, write_end = os.pipe()
    try:
        slot.reader_fd = read_end
        stop_reading(None, slot)
        assert slot.reader_fd == read_end
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fork_start_method_is_deprecated() -> None:
    """A launcher (so a lane) with ``start_method="fork"`` warns that it is deprecated and
    names the replacements; forkserver and spawn do not warn."""
    with pytest.warns(DeprecationWarning, match="'fork' is deprecated.*'forkserver'.*'spawn'"):
        SlotLauncher("fork", PRELOAD, threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SlotLauncher("forkserver", PRELOAD, threads=1)
        SlotLauncher("spawn", PRELOAD, threads=1)


async def test_launcher_reports_full_internals_here() -> None:
    """On the CPython versions the lane is tested on, the version gate finds every
    internal it relies on, so the lane runs on its private forkserver (0 in metrics)."""
    launcher = SlotLauncher("forkserver", PRELOAD, threads=1)
    assert launcher.internals.missing == ()
    assert launcher.metrics() == {"process_lane_fallback_internals": 0}
