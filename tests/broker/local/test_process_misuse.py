"""
Misuse of the process lane fails cleanly: a second event loop, a fork of the service.

A call from an event loop other than the lane's is refused before it is queued
(so it never runs, and a retry cannot run it twice). A child forked from the
service after the lane started forgets the lane: the parent's close does not wait
for the child, and the child's calls are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from resource_supervisor.broker._local._lane import ProcessLane
from tests import _workers
from tests._leaks import child_pids
from tests._settings import lane_settings

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(30)


async def test_call_from_a_second_event_loop_is_refused_before_it_runs(tmp_path: Path) -> None:
    """A call made on another thread's event loop raises RuntimeError and never runs."""
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        assert await lane.run(_workers.square, (2,), timeout=None) == 4
        raised: list[BaseException] = []

        def other_loop() -> None:
            try:
                asyncio.run(lane.run(_workers.record, (str(tmp_path), "twice", 1), timeout=None))
            except BaseException as exc:  # noqa: BLE001 - inspected below
                raised.append(exc)

        thread = threading.Thread(target=other_loop)
        thread.start()
        await anyio.to_thread.run_sync(thread.join)
        assert len(raised) == 1
        assert isinstance(raised[0], RuntimeError)
        assert "another event loop" in str(raised[0])
        assert lane.statistics().queue_depth == 0
        assert await lane.run(_workers.square, (3,), timeout=None) == 9
    assert not (tmp_path / "twice").exists()


async def test_fork_of_the_service_neither_hangs_its_close_nor_uses_its_lane() -> None:
    """
    After os.fork() in a service whose lane runs, the parent's close ends while the
    child still lives (it holds no descriptor that keeps the lane's forkserver
    alive), and the child's calls are refused with RuntimeError.
    """
    before = child_pids()
    lane = ProcessLane(lane_settings(), max_workers=1)
    assert await lane.run(_workers.square, (3,), timeout=None) == 9
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: try the lane on a fresh loop, report, wait to be told to go
        os.close(go_w)
        os.close(report_r)
        code = 1
        try:
            asyncio.run(lane.run(_workers.square, (4,), timeout=None))
        except RuntimeError as exc:
            code = 0 if "forked" in str(exc) else 2
        except BaseException:  # noqa: BLE001 - any other outcome is the child's failure
            code = 3
        os.write(report_w, bytes([code]))
        os.read(go_r, 1)
        os._exit(0)
    os.close(go_r)
    os.close(report_w)
    try:
        await lane.aclose()  # shielded: a hang here ends in the test's timeout
        assert child_pids() - before == {pid}  # closed while the child lives on
        report = await anyio.to_thread.run_sync(os.read, report_r, 1)
        assert report == b"\x00"
    finally:
        os.close(go_w)
        os.close(report_r)
        await anyio.to_thread.run_sync(os.waitpid, pid, 0)


async def test_a_forgotten_lane_refuses_calls_and_its_workers_exit() -> None:
    """
    What a forked child does to its copy of the lane, done here in-process: the lane
    refuses calls with RuntimeError, and with the lifeline and the forkserver's pipe
    closed its worker and forkserver exit by themselves.
    """
    import psutil

    before = child_pids()
    lane = ProcessLane(lane_settings(), max_workers=1)
    assert await lane.run(_workers.square, (5,), timeout=None) == 25
    started = [psutil.Process(pid) for pid in child_pids() - before]
    assert started
    lane.forget_after_fork()
    with pytest.raises(RuntimeError, match="forked"):
        await lane.run(_workers.square, (6,), timeout=None)
    await lane.aclose()  # a no-op now

    def gone(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    with anyio.fail_after(10):
        while not all(gone(p) for p in started):  # noqa: ASYNC110 - other processes
            await anyio.sleep(0.02)
    for process in started:  # reap what is our own child
        with contextlib.suppress(ChildProcessError, psutil.Error):
            if process.ppid() == os.getpid():
                await anyio.to_thread.run_sync(os.waitpid, process.pid, 0)
