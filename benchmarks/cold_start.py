"""
Cold start: time to the first process result in a fresh service process.

Each sample is a new interpreter (``python -m benchmarks._cold_child CASE``), so
nothing is warm: not the lane's forkserver, its workers, or the OS page cache of
what they import beyond what any Python start touches. Contenders, each with two
workers where they have a pool:

- ``ProcessPoolExecutor(2)`` with the forkserver start method (the baseline);
- the process lane (``Executors.run_in_process``), entered but not yet used;
- ``anyio.to_process.run_sync`` (a fresh ``python -m anyio`` worker per process);
- the process lane with ``prestart_process_lane: true``, first call half a second
  after the lane started (what a service gains by prestarting).

Two figures per sample: the milliseconds from just before the first call to its
result (every import done before; the target), and the wall time of the whole
process, interpreter start to exit, measured from outside (imports included: the
service's own import of the package, pydantic included, is in it).
"""

from __future__ import annotations

import subprocess
import sys
import time

import anyio

from ._harness import Case, SuiteContext, Target

STDLIB = "ProcessPoolExecutor(2), forkserver"
LANE = "process lane (run_in_process)"
ANYIO = "anyio.to_process.run_sync"
PRESTARTED = "process lane, prestarted, first call after 0.5 s"
CASES = {STDLIB: "stdlib", LANE: "lane", ANYIO: "anyio", PRESTARTED: "lane-prestarted"}


def _sample(case: str) -> tuple[float, float]:
    """Run one fresh process; return (ms to the first result, ms of the whole process)."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks._cold_child", case],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    wall = (time.perf_counter() - start) * 1000
    return float(out.stdout.strip().splitlines()[-1]), wall


async def run(ctx: SuiteContext) -> None:
    """
    Compare the time to the first process result, cold, and the whole process's time.

    Cancellation:
        Propagates; a sample's process is waited for in a worker thread.
    """
    walls: dict[str, list[float]] = {name: [] for name in CASES}

    def case(name: str) -> Case:
        async def measure() -> float:
            first, wall = await anyio.to_thread.run_sync(_sample, CASES[name])
            walls[name].append(wall)
            return first

        return Case(name, measure)

    def replay(name: str) -> Case:
        async def measure() -> float:
            return walls[name].pop(0)

        return Case(name, measure)

    rounds = ctx.scale(9, 3)
    await ctx.compare(
        "time to the first process result, cold (fresh process per sample)",
        [case(name) for name in CASES],
        unit="ms",
        baseline=STDLIB,
        rounds=rounds,
        targets=[
            Target(
                "cold process lane <= 1.2x ProcessPoolExecutor to its first result",
                LANE,
                STDLIB,
                max_ratio=1.2,
            )
        ],
    )
    await ctx.compare(
        "whole process, interpreter start to exit (imports included)",
        [replay(name) for name in CASES],
        unit="ms",
        baseline=STDLIB,
        rounds=rounds,
    )
    ctx.note(
        "Each sample is a new interpreter. The first table starts the clock after every "
        "import, just before the first call; the second is the whole process from "
        "outside, so it includes importing the package (pydantic and YAML among it) in "
        "the service, which workers no longer do."
    )
