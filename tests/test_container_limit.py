"""
A real container memory limit: a child service in a fresh memory cgroup.

The supervised service reads the cgroup's limit (not the host's memory), reaches
WARNING and CRITICAL, has its cache cleaned up and survives a ramp that allocates
twice the limit; the same ramp without the supervisor is killed by the kernel's
OOM killer. Each test creates its cgroup inside this process's own memory cgroup
(never at the hierarchy root) and removes it afterwards, also on failure.

Needs root and a writable memory controller (cgroup v1, or v2 with ``+memory``
delegable to a child of this process's cgroup); skipped with the reason otherwise.
The service itself is ``tests/_cgroup_child.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from resource_supervisor.testing import CgroupUnavailableError, MemoryCgroup
from resource_supervisor.testing import memory_cgroup as sandbox_cgroup

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.cgroup, pytest.mark.slow, pytest.mark.timeout(60)]

MiB = 1024 * 1024
LIMIT_BYTES = 300 * MiB
STEP_BYTES = 10 * MiB
TARGET_BYTES = 2 * LIMIT_BYTES
CHILD = Path(__file__).with_name("_cgroup_child.py")
RUN_TIMEOUT_SECONDS = 40.0


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to LIMIT_BYTES; removed afterwards, also on failure."""
    with contextlib.ExitStack() as stack:
        try:
            cgroup = stack.enter_context(sandbox_cgroup(LIMIT_BYTES, prefix="rs-test"))
        except CgroupUnavailableError as exc:
            pytest.skip(str(exc))
        yield cgroup


@dataclass(frozen=True)
class ChildRun:
    """What a child service did."""

    returncode: int
    lines: list[dict[str, object]]
    stderr: str


def _run_child(cgroup: MemoryCgroup, mode: str) -> ChildRun:
    env = dict(os.environ)
    # Large blocks always come from mmap, so freeing them returns memory to the
    # kernel at once (glibc would otherwise raise its mmap threshold after the
    # first free and keep freed blocks in the heap).
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 * MiB)
    env.pop("COVERAGE_PROCESS_START", None)
    process = subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(STEP_BYTES), str(TARGET_BYTES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        cgroup.add(process.pid)  # before it allocates: it waits for "go"
        assert process.pid in cgroup.pids()
        stdout, stderr = process.communicate(b"go\n", timeout=RUN_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return ChildRun(process.returncode, lines, stderr.decode())


def test_supervised_service_reads_the_cgroup_limit_cleans_up_and_survives(
    memory_cgroup: MemoryCgroup,
) -> None:
    """
    Inside a 300 MiB cgroup the supervisor measures against the cgroup limit, not
    host memory; a ramp allocating 600 MiB in total drives it to WARNING and
    CRITICAL, the registered cache is cleaned (aggressively at CRITICAL), and the
    service finishes with exit status 0 and no OOM kill in its cgroup.
    """
    run = _run_child(memory_cgroup, "supervised")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.lines, run.stderr[-3000:]
    assert run.lines[-1] == {"done": True}
    steps = run.lines[:-1]
    expected_source = memory_cgroup.version
    for record in steps:
        assert record["memory_limit_bytes"] == LIMIT_BYTES
        assert record["memory_limit_source"] == expected_source
    assert steps[-1]["allocated_bytes"] == TARGET_BYTES
    # the level at each step, and every level changed to (one may last less than a step)
    seen = steps[-1]["levels_seen"]
    assert isinstance(seen, list)
    levels = {record["level"] for record in steps} | set(seen)
    assert {"WARNING", "CRITICAL"} <= levels, levels
    final = steps[-1]
    assert isinstance(final["cleanups"], int)
    assert isinstance(final["aggressive_cleanups"], int)
    assert final["cleanups"] >= 2
    assert final["aggressive_cleanups"] >= 1
    peak_percent = max(float(str(record["memory_percent"])) for record in steps)
    assert 60.0 <= peak_percent < 100.0
    assert memory_cgroup.oom_kills() == 0


def test_same_ramp_without_the_supervisor_is_oom_killed(memory_cgroup: MemoryCgroup) -> None:
    """
    The control run: the same ramp with nothing freeing the cache is killed by
    the kernel's OOM killer (SIGKILL, counted in the cgroup's oom_kill counter)
    before it reaches its target, which proves the limit is real.
    """
    run = _run_child(memory_cgroup, "unsupervised")
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr[-3000:])
    assert memory_cgroup.oom_kills() >= 1
    assert {"done": True} not in run.lines
    allocated = [int(str(record["allocated_bytes"])) for record in run.lines]
    assert allocated, "the child died before its first step"
    assert max(allocated) < TARGET_BYTES
