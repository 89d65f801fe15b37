"""
The process lane under memory pressure: workers go first, and the lane says why.

Workers raise their own ``oom_score_adj`` so the kernel's OOM killer picks them
before the service; each sample measures every worker's resident memory; at
CRITICAL the largest worker is killed when it holds more than the service (its
call fails with ``reason="memory_pressure"``); a worker the kernel's OOM killer
ended is told apart from a crash by the cgroup's OOM-kill counter. The last test
runs a real service in a real 300 MiB memory cgroup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from resource_supervisor._exceptions import WorkerCrashedError
from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._worker_memory import (
    OomKillCounter,
    memory_victim,
    parse_oom_kills,
)
from tests import _workers
from tests._settings import lane_settings
from tests.test_container_limit import memory_cgroup as memory_cgroup  # the fixture

if TYPE_CHECKING:
    from resource_supervisor.testing import MemoryCgroup

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]


async def _until(condition: object, limit: float = 20.0) -> None:
    assert callable(condition)
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - the state lives in other processes
            await anyio.sleep(0.01)


def test_parse_oom_kills_reads_v1_and_v2_files() -> None:
    """The oom_kill line of memory.oom_control (v1) and memory.events (v2) is read."""
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert parse_oom_kills(v1) == 3
    assert parse_oom_kills(v2) == 2
    assert parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n") is None


def test_memory_victim_is_the_largest_worker_only_above_the_service() -> None:
    """The largest worker is chosen only when it holds more than the service."""
    assert memory_victim([(0, 10 * MiB), (1, 300 * MiB), (2, 50 * MiB)], 200 * MiB) == 1
    assert memory_victim([(0, 10 * MiB), (1, 150 * MiB)], 200 * MiB) is None
    assert memory_victim([], 0) is None


def test_oom_kill_counter_sees_the_count_rise(tmp_path: Path) -> None:
    """The counter reports a rise of the cgroup's oom_kill count once, from a baseline."""
    proc = tmp_path / "proc" / str(os.getpid())
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("4:memory:/svc\n")
    svc = tmp_path / "sys" / "memory" / "svc"
    svc.mkdir(parents=True)
    events = svc / "memory.oom_control"
    events.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    counter = OomKillCounter(proc_root=str(tmp_path / "proc"), cgroup_root=str(tmp_path / "sys"))
    counter.start()
    assert not counter.rose()
    events.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert counter.rose()
    assert not counter.rose()


async def test_workers_raise_their_oom_score_adj() -> None:
    """Workers run with the configured oom_score_adj (500 by default)."""
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        assert await lane.run(_workers.oom_score_adj, (), timeout=None) == 500
    settings = lane_settings(worker_oom_score_adj=None)
    async with ProcessLane(settings, max_workers=1) as lane:
        inherited = int(Path("/proc/self/oom_score_adj").read_text())  # noqa: ASYNC240
        assert await lane.run(_workers.oom_score_adj, (), timeout=None) == inherited


async def test_metrics_carry_worker_rss_and_critical_kills_the_fat_worker(
    tmp_path: Path,
) -> None:
    """
    A worker holding more memory than the service shows in the metrics (largest and
    sum); at CRITICAL the lane kills it, its call fails with WorkerCrashedError and
    reason "memory_pressure", and the lane answers the next call.
    """
    gate = tmp_path / "gate"
    service = _workers.rss_self()
    fat = service + 200 * MiB
    async with ProcessLane(lane_settings(), max_workers=2) as lane:
        assert await lane.run(_workers.square, (2,), timeout=None) == 4
        async with anyio.create_task_group() as tg:
            failure: list[BaseException] = []

            async def fat_call() -> None:
                try:
                    await lane.run(_workers.allocate_and_wait, (fat, str(gate)), timeout=None)
                except WorkerCrashedError as exc:
                    failure.append(exc)

            tg.start_soon(fat_call)
            await _until(lambda: Path(f"{gate}.started").exists())
            metrics = lane.metrics()
            assert int(metrics["process_worker_rss_max_bytes"]) >= fat
            assert int(metrics["process_worker_rss_bytes"]) >= int(
                metrics["process_worker_rss_max_bytes"]
            )
            assert metrics["process_memory_kills_total"] == 0
            lane.set_pressure(PressureLevel.CRITICAL)
            lane.metrics()
        (error,) = failure
        assert isinstance(error, WorkerCrashedError)
        assert error.reason == "memory_pressure"
        assert "CRITICAL" in str(error)
        assert lane.metrics()["process_memory_kills_total"] == 1
        assert lane.statistics().crashed_total == 0
        assert await lane.run(_workers.square, (3,), timeout=None) == 9


def test_in_a_300_mib_cgroup_the_growing_worker_dies_and_the_service_survives(
    memory_cgroup: MemoryCgroup,
) -> None:
    """
    A service holding 150 MiB in a 300 MiB cgroup runs a call growing at 200 MiB/s:
    the worker dies (killed by the lane at CRITICAL, or by the kernel's OOM killer,
    which then counts in process_oom_kills_total), the call fails with a
    WorkerCrashedError saying which, and the service lives on and answers again.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": str(MiB)}
    env.pop("COVERAGE_PROCESS_START", None)
    with subprocess.Popen(
        [sys.executable, "-m", "tests._oom_service"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as service:
        try:
            memory_cgroup.add(service.pid)
            stdout, stderr = service.communicate(b"go\n", timeout=60)
        finally:
            if service.poll() is None:
                service.kill()
                service.communicate()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert service.returncode == 0, (service.returncode, stderr.decode()[-3000:])
    assert lines[-1]["done"] is True
    outcome = lines[0]
    assert outcome["outcome"] == "crashed", outcome
    assert outcome["reason"] in {"memory_pressure", "oom_kill"}, outcome
    if outcome["reason"] == "oom_kill":
        assert outcome["oom_kills"] >= 1
        assert memory_cgroup.oom_kills() >= 1
    else:
        assert outcome["memory_kills"] == 1


def test_worker_memory_figures_are_exported_to_prometheus() -> None:
    """The lane's OOM and memory-kill counts are Prometheus counters, the RSS figures gauges."""
    prometheus = pytest.importorskip("resource_supervisor.integrations.prometheus")
    assert prometheus.describe_key("process_oom_kills_total").kind == "counter"
    assert prometheus.describe_key("process_memory_kills_total").kind == "counter"
    for key in ("process_worker_rss_max_bytes", "process_worker_rss_bytes"):
        description = prometheus.describe_key(key)
        assert (description.name, description.kind) == (f"resource_supervisor_{key}", "gauge")
