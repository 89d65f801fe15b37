"""
Running one survival scenario inside a fresh memory cgroup and reading what happened.

Covers: :func:`run_in_cgroup` (create the cgroup, start
:mod:`benchmarks._survival_child` in it, feed it its config, collect its lines, the
cgroup's OOM-kill counter and peak usage, kill what is left, remove the cgroup) and
:class:`Outcome`, the pure reading of one run (survived or killed, calls, rates,
crossing-to-handler time).

Does not cover: what the child does (:mod:`benchmarks._survival_child`) or the tables
(:mod:`benchmarks.survival`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent

__all__ = ("ChildRun", "Outcome", "outcome", "run_in_cgroup")


@dataclasses.dataclass(frozen=True, slots=True)
class ChildRun:
    """The raw record of one child run."""

    returncode: int
    lines: tuple[dict[str, Any], ...]
    stderr: str
    oom_kills: int
    peak_bytes: int | None
    limit_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """
    What one run means.

    Attributes:
        survived: The service finished its workload (not OOM-killed, exit 0).
        oom_kills: Processes the kernel's OOM killer ended in the cgroup.
        peak_percent: Peak charged memory as percent of the limit (None if not kept).
        completed: Calls that returned (lane scenario).
        lost: Calls that failed, or never ran because the service died.
        shed: Calls refused under pressure (``OverloadedError``), by design.
        calls_per_second: Completed calls over the run's wall time.
        reaction_ms: Warning-threshold crossing to the first cleanup handler (ramp).
    """

    survived: bool
    oom_kills: int
    peak_percent: float | None
    completed: int = 0
    lost: int = 0
    shed: int = 0
    calls_per_second: float = 0.0
    reaction_ms: float | None = None


def outcome(run: ChildRun, *, planned_calls: int = 0) -> Outcome:
    """Read *run*; calls the workload planned but never reported count as lost."""
    done = next((line for line in run.lines if line.get("done")), None)
    peak = None if run.peak_bytes is None else 100.0 * run.peak_bytes / run.limit_bytes
    survived = done is not None and run.returncode == 0
    if done is None:
        return Outcome(
            survived=False, oom_kills=run.oom_kills, peak_percent=peak, lost=planned_calls
        )
    completed = int(done.get("completed", 0))
    shed = int(done.get("shed", 0))
    lost = max(int(done.get("lost", 0)), planned_calls - completed - shed)
    wall = float(done.get("wall", 0.0))
    reaction = None
    if done.get("crossed_at") is not None and done.get("first_handler_at") is not None:
        reaction = max(0.0, (done["first_handler_at"] - done["crossed_at"]) * 1e3)
    return Outcome(
        survived=survived,
        oom_kills=run.oom_kills,
        peak_percent=peak,
        completed=completed,
        lost=lost,
        shed=shed,
        calls_per_second=completed / wall if wall > 0 else 0.0,
        reaction_ms=reaction,
    )


def run_in_cgroup(config: dict[str, Any], limit_bytes: int, *, timeout: float) -> ChildRun:
    """
    Run the child with *config* inside a new cgroup limited to *limit_bytes*.

    Blocking: call it from a worker thread. Whatever is left in the cgroup at the
    end (a static pool's orphaned workers, say) is killed before it is removed.

    Raises:
        CgroupUnavailableError: Where the cgroup cannot be made.
    """
    from resource_supervisor.testing import memory_cgroup

    env = dict(os.environ)
    # Large blocks come from mmap, so a freed cache goes back to the kernel at once.
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 * MiB)
    env.pop("COVERAGE_PROCESS_START", None)
    with memory_cgroup(limit_bytes, prefix="rs-bench") as cgroup:
        full = {**config, "cgroup": str(cgroup.path), "limit_bytes": limit_bytes}
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._survival_child", json.dumps(full)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        try:
            cgroup.add(process.pid)  # before it allocates: it waits for "go"
            cgroup.reset_peak()
            try:
                stdout, stderr = process.communicate(b"go\n", timeout=timeout)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                stdout, stderr = process.communicate()
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
            oom_kills = cgroup.oom_kills()
            peak = cgroup.peak_bytes()
            cgroup.kill_all()
    lines = tuple(json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{"))
    return ChildRun(process.returncode, lines, stderr.decode(), oom_kills, peak, limit_bytes)
