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
service's own import of the package, pydantic included, is in it). Both exclude or
include the interpreter's start the same way for every case.

Bytecode: the standard library loads from its ``__pycache__``; so that the package
does too (as it does when installed from a wheel), the suite compiles the
package's and the benchmarks' bytecode before the first sample. Without it, where
``PYTHONDONTWRITEBYTECODE`` is set and no cache exists, the lane's forkserver
compiles the worker's modules from source at every cold start (a few ms each).

Fairness: the same function (``benchmarks._work.noop``), the same start method
and worker count, a cold interpreter per sample, the cases interleaved in a
rotating order each round; the target is the median of the per-round ratios, and
a table gives the median and p90 of the times and of the ratios.
"""

from __future__ import annotations

import compileall
import subprocess
import sys
import time
from pathlib import Path

import anyio

import resource_supervisor

from ._harness import Case, Comparison, SuiteContext, Target, percentile

STDLIB = "ProcessPoolExecutor(2), forkserver"
LANE = "process lane (run_in_process)"
ANYIO = "anyio.to_process.run_sync"
PRESTARTED = "process lane, prestarted, first call after 0.5 s"
CASES = {STDLIB: "stdlib", LANE: "lane", ANYIO: "anyio", PRESTARTED: "lane-prestarted"}
TIME_LIMITS = {"full": 600.0, "quick": 120.0}


def _cache_bytecode() -> None:
    """Write the package's and the benchmarks' bytecode caches (as a wheel install has)."""
    for package in (Path(resource_supervisor.__file__).parent, Path(__file__).parent):
        compileall.compile_dir(package, quiet=1)


def _spread(comparison: Comparison) -> list[list[str]]:
    """Rows of median and p90, of the times and of the per-round ratios, per case."""
    return [
        [
            stats.name,
            f"{stats.median:.1f}",
            f"{percentile(stats.values, 90):.1f}",
            f"{stats.ratio_median:.2f}x",
            f"{percentile(stats.ratios, 90):.2f}x",
        ]
        for stats in comparison.cases
    ]


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
    await anyio.to_thread.run_sync(_cache_bytecode)
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

    rounds = ctx.scale(25, 5)
    first = await ctx.compare(
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
    ctx.table(
        f"time to the first process result, cold: median and p90 over {rounds} rounds",
        ["case", "median ms", "p90 ms", "ratio median", "ratio p90"],
        _spread(first),
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
        "the service, which workers no longer do. The package's bytecode is cached "
        "before the first sample, as the standard library's is. Ratios are per round "
        "(the cases of one round run back to back), so the machine's load moves both "
        "sides of a ratio."
    )
