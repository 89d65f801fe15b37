"""
Lifecycle: entering and leaving a Supervisor many times leaves nothing behind.

Each cycle enters a supervisor, uses the broker and the streams, and leaves; the
test counts threads (``threading.enumerate()``), open file descriptors
(``/proc/self/fd``), asyncio tasks (``asyncio.all_tasks()``) and child processes
(psutil) before and after. Budget: ``make test`` must stay within minutes on two
cores, so here 1000 cycles use the thread lane and sampling (about 2 ms each) and
20 cycles also use the process lane (each starts a forkserver and a worker, about
0.3 s); ``make soak`` (``benchmarks/soak.py``) runs 1000 cycles with the process lane.

A warm-up cycle runs first: the interpreter-wide ``multiprocessing`` resource
tracker, started by the first worker process and documented as left running, is
then part of the baseline.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil
import pytest

from resource_supervisor import Supervisor, SupervisorSettings
from tests import _fault_workers as fw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

THREAD_CYCLES = 1000
PROCESS_CYCLES = 20
GUARD_SECONDS = 15.0


@dataclass(frozen=True)
class Census:
    """What this process holds at one moment."""

    threads: collections.Counter[str]
    fds: int
    children: frozenset[int]


def census() -> Census:
    """Count threads by name, open descriptors and live child processes."""
    children = frozenset(
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.status() != psutil.STATUS_ZOMBIE
    )
    return Census(
        threads=collections.Counter(thread.name for thread in threading.enumerate()),
        fds=len(os.listdir("/proc/self/fd")),
        children=children,
    )


def settled(baseline: Census) -> Census:
    """
    Wait (hang guard only) until the census matches *baseline*, then return it;
    return the last census if it never does, for the assertion to show.
    """
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        now = census()
        settled_now = now.children == baseline.children and now.fds == baseline.fds
        if (settled_now and not now.threads - baseline.threads) or time.monotonic() > deadline:
            return now
        time.sleep(0.01)


def settings() -> SupervisorSettings:
    """Sample every millisecond (the loop runs during the cycle), 1 worker, 2 threads."""
    return SupervisorSettings.model_validate(
        {
            "monitoring_interval": 0.001,
            "concurrency": {"default_cpu_workers": 1, "default_io_workers": 2},
        }
    )


async def cycle(*, use_processes: bool) -> None:
    """Enter a supervisor, use threads, streams, sessions (and processes), leave."""
    async with Supervisor(settings()) as sup, sup.subscribe(buffer=4) as stream:
        assert await sup.executors.run_in_thread(sum, (1, 2, 3)) == 6
        snapshot = await sup.update_metrics()
        assert await stream.receive() is not None
        assert snapshot["memory_limit_bytes"] > 0
        async with sup.sessions.session("lifecycle"):
            assert sup.sessions.active == 1
        if use_processes:
            assert await sup.executors.run_in_process(fw.square, 7) == 49


async def run_cycles(count: int, *, use_processes: bool) -> tuple[int, int]:
    """Run *count* cycles; return how many asyncio tasks exist before and after."""
    before_tasks = len(asyncio.all_tasks())
    for _ in range(count):
        await cycle(use_processes=use_processes)
    after_tasks = len(asyncio.all_tasks())
    return before_tasks, after_tasks


def check_cycles(count: int, *, use_processes: bool) -> None:
    """
    Run *count* cycles on a fresh event loop and assert that tasks and descriptors
    are back to their count while the loop still runs, and that threads, children
    and descriptors match the baseline once it has closed.
    """
    anyio.run(functools.partial(cycle, use_processes=True))  # warm-up: resource tracker
    baseline = settled(census())

    async def main() -> tuple[int, int]:
        fds_before = len(os.listdir("/proc/self/fd"))
        tasks = await run_cycles(count, use_processes=use_processes)
        assert len(os.listdir("/proc/self/fd")) == fds_before
        return tasks

    before_tasks, after_tasks = anyio.run(main)
    assert after_tasks == before_tasks
    after = settled(baseline)
    assert after.children == baseline.children
    assert after.fds == baseline.fds
    # A thread of an earlier test (an idle AnyIO worker) may retire meanwhile: only new
    # threads count.
    assert after.threads - baseline.threads == collections.Counter()


def test_thousand_cycles_with_threads_and_sampling_leave_nothing_behind() -> None:
    """
    1000 enter/exit cycles that sample, publish to a subscriber, run a thread-lane
    call and open a session leave no thread, file descriptor, asyncio task or
    child process behind (thread lane only, to fit ``make test``; ``make soak``
    runs 1000 cycles with the process lane).
    """
    check_cycles(THREAD_CYCLES, use_processes=False)


def test_cycles_with_the_process_lane_leave_no_worker_or_forkserver() -> None:
    """
    20 enter/exit cycles that also run a process-lane call (each starts the lane's
    forkserver and a worker) leave no child process, thread, file descriptor or
    task behind (20, not 1000, to fit ``make test``; ``make soak`` runs 1000).
    """
    check_cycles(PROCESS_CYCLES, use_processes=True)


def test_leaving_while_the_sampler_runs_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """
    Leaving a supervisor just as its sampling loop is due is a normal shutdown:
    over 100 cycles that each wait one sampling interval (1 ms) and leave, nothing
    is logged at ERROR (no sample is attempted on a closed supervisor).
    """
    with caplog.at_level(logging.ERROR, logger="resource_supervisor"):

        async def main() -> None:
            for _ in range(100):
                async with Supervisor(settings()):
                    await anyio.sleep(settings().monitoring_interval)

        anyio.run(main)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


# -- the interpreter exits, whatever is left hanging --------------------------------------


def _run_script(module: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module`` from the checkout; a hang fails at the 60 s timeout."""
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
        check=False,
    )


def test_interpreter_exits_with_hung_thread_calls_providers_and_handlers() -> None:
    """
    A real interpreter exits after anyio.run returns although a thread call timed out
    (CallTimeoutError, its thread abandoned and counted), another was abandoned on
    cancel, a sync provider and a sync cleanup handler hang in their threads: every
    such thread is a daemon, and the supervisor's exit is bounded by shutdown_timeout.
    """
    proc = _run_script("tests._hung_thread_service")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "timeout hang did not finish within 0.2 s; its thread was abandoned"
    assert lines[1] == "abandoned 1 1"
    assert lines[2] == "cleanup memory=ok sessions=ok stuck=timeout"
    assert lines[-1] == "exited"


def test_facade_script_exits_with_a_thread_feeding_a_map_and_work_in_flight() -> None:
    """
    A facade script whose non-daemon thread keeps feeding map_tasks_in_process_pool,
    with a thread call that never returns and one queued behind it, exits by itself
    at interpreter shutdown: the queued call and the feeder get SupervisorClosedError.
    """
    proc = _run_script(
        "tests._facade_feeder",
        {
            "RESOURCE_SUPERVISOR_CONCURRENCY__DEFAULT_IO_WORKERS": "1",
            "RESOURCE_SUPERVISOR_CONCURRENCY__DEFAULT_CPU_WORKERS": "1",
            "RESOURCE_SUPERVISOR_SHUTDOWN_TIMEOUT": "1",
            "RESOURCE_SUPERVISOR_MONITORING_ENABLED": "false",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "main done" in lines
    assert "queued SupervisorClosedError" in lines
    assert "feeder closed" in lines
