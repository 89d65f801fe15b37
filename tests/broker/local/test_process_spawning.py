"""
The process lane starts no more workers than calls wait for, and no more than fit.

Workers still starting are not busy: they will take queued calls, so a burst of
calls starts one worker per call at most (counting those already starting), and
never more at once than the memory headroom holds. Real worker processes; the
headroom test reads a directory laid out like ``/proc`` and ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import anyio
import pytest

from resource_supervisor.broker._local._headroom import WORKER_BYTES_FLOOR, MemoryHeadroom
from resource_supervisor.broker._local._lane import ProcessLane
from tests import _workers
from tests._settings import lane_settings

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


async def _peak_workers(
    lane: ProcessLane, calls: int, seconds: float, *, starting: bool = False
) -> int:
    """Run *calls* concurrent sleeps; return the most workers seen (started or starting,
    or with *starting* only those still starting)."""
    peak = 0
    done = asyncio.Event()

    def count() -> int:
        stats = lane.statistics()
        return stats.workers_starting if starting else stats.workers_live

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, count())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    with anyio.fail_after(60):
        results = await asyncio.gather(
            *(lane.run(_workers.sleep, (seconds,), timeout=None) for _ in range(calls))
        )
    done.set()
    await watcher
    assert results == [seconds] * calls
    return max(peak, count())


async def test_three_calls_start_at_most_three_of_eight_workers() -> None:
    """Three concurrent calls on a lane of 8 start at most 3 workers."""
    async with ProcessLane(lane_settings(), max_workers=8) as lane:
        assert await _peak_workers(lane, 3, 0.3) <= 3


async def test_twenty_calls_start_at_most_twenty_of_a_thousand_workers() -> None:
    """Twenty concurrent calls on a lane of 1000 start at most 20 workers."""
    async with ProcessLane(lane_settings(), max_workers=1000) as lane:
        assert await _peak_workers(lane, 20, 0.3) <= 20


def _fake_roots(tmp_path: Path, *, limit: int, usage: int) -> tuple[str, str]:
    """Lay out /proc and /sys/fs/cgroup (v1) for this pid with the given cgroup figures."""
    proc = tmp_path / "proc"
    (proc / str(os.getpid())).mkdir(parents=True)
    (proc / str(os.getpid()) / "cgroup").write_text("4:memory:/svc\n")
    (proc / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n")
    cgroup = tmp_path / "sys" / "fs" / "cgroup"
    svc = cgroup / "memory" / "svc"
    svc.mkdir(parents=True)
    (svc / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (svc / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (svc / "memory.stat").write_text("total_inactive_file 0\n")
    return str(proc), str(cgroup)


def test_headroom_reads_the_cgroup_below_its_limit(tmp_path: Path) -> None:
    """Headroom is the cgroup limit minus its working set when that is below the host's."""
    proc, cgroup = _fake_roots(tmp_path, limit=1024 * MiB, usage=900 * MiB)
    headroom = MemoryHeadroom(proc_root=proc, cgroup_root=cgroup)
    try:
        assert headroom.available_bytes() == 124 * MiB
    finally:
        headroom.close()


async def test_no_headroom_keeps_a_single_worker(tmp_path: Path) -> None:
    """
    With no memory left under the cgroup limit, twenty concurrent calls on a lane of
    1000 start one worker (calls must run somewhere) and no other; all are answered.
    """
    proc, cgroup = _fake_roots(tmp_path, limit=1024 * MiB, usage=1024 * MiB)
    headroom = MemoryHeadroom(proc_root=proc, cgroup_root=cgroup)
    async with ProcessLane(lane_settings(), max_workers=1000, headroom=headroom) as lane:
        assert await _peak_workers(lane, 20, 0.01) == 1


async def test_workers_starting_at_once_are_bounded_by_the_headroom(tmp_path: Path) -> None:
    """
    With room for three workers at the least a worker is assumed to need, twenty
    concurrent calls on a lane of 1000 never have more than three workers starting
    at once; all are answered.
    """
    usage = 1024 * MiB - 3 * WORKER_BYTES_FLOOR
    proc, cgroup = _fake_roots(tmp_path, limit=1024 * MiB, usage=usage)
    headroom = MemoryHeadroom(proc_root=proc, cgroup_root=cgroup)
    async with ProcessLane(lane_settings(), max_workers=1000, headroom=headroom) as lane:
        assert await _peak_workers(lane, 20, 0.05, starting=True) <= 3
