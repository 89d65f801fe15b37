"""
The process lane's adaptive sizing under scripted pressure vs static pools, on a
mixed bursty workload (bursts of calls that each hold 16 MiB and spin 20 ms).

The supervisor's source is a ``ScriptedSource``: before each burst the script sets
memory to NORMAL, WARNING or CRITICAL and calls ``update_metrics()``, so the lane
shrinks, refuses work beyond its queue limit (``OverloadedError``, counted as shed)
and grows back. The static ``ProcessPoolExecutor`` pools ignore pressure. Figures:
wall time per completed call, and peak memory (RSS of this process plus every
child, sampled every 20 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import anyio
import psutil

from ._harness import Case, SuiteContext
from ._rss import PeakRss
from ._work import alloc_and_spin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

MAX_WORKERS = 4
SCHEDULE = (10.0, 10.0, 80.0, 95.0, 95.0, 10.0)
"""memory_percent before each burst: NORMAL, NORMAL, WARNING, CRITICAL, CRITICAL, NORMAL."""


async def run(ctx: SuiteContext) -> None:
    """
    Compare the adaptive lane with static pools.

    Cancellation:
        Propagates; the supervisor and the pools are closed on the way out.
    """
    from resource_supervisor._config import ConcurrencySettings, SupervisorSettings
    from resource_supervisor._exceptions import OverloadedError
    from resource_supervisor._supervisor import Supervisor
    from resource_supervisor.testing import ScriptedSource

    bursts = ctx.scale(18, 6)
    per_burst = ctx.scale(16, 12)
    figures: dict[str, list[tuple[float, int, int, int]]] = {}

    async def workload(
        name: str,
        submit: Callable[[], Awaitable[object]],
        before_burst: Callable[[int], Awaitable[None]],
        pids: Callable[[], Iterable[int]],
    ) -> float:
        completed = shed = 0

        async def one() -> None:
            nonlocal completed, shed
            try:
                await submit()
                completed += 1
            except OverloadedError:
                shed += 1

        with PeakRss(children=pids) as peak:
            start = time.perf_counter()
            for burst in range(bursts):
                await before_burst(burst)
                async with anyio.create_task_group() as tg:
                    for _ in range(per_burst):
                        tg.start_soon(one)
                await anyio.sleep(0.05)  # the gap between bursts
            wall = time.perf_counter() - start
        figures.setdefault(name, []).append((wall, completed, shed, peak.bytes))
        return wall * 1e3 / max(1, completed)

    source = ScriptedSource()
    source.set(memory_percent=SCHEDULE[0])
    settings = SupervisorSettings(
        monitoring_interval=60.0,  # pressure comes from the script, applied by hand
        cleanup_cooldown=0.0,
        concurrency=ConcurrencySettings(default_cpu_workers=MAX_WORKERS, queue_limit=4),
    )
    async with contextlib.AsyncExitStack() as stack:
        sup = await stack.enter_async_context(Supervisor(settings, source=source))
        context = multiprocessing.get_context("forkserver")
        static_max = stack.enter_context(ProcessPoolExecutor(MAX_WORKERS, mp_context=context))
        static_2 = stack.enter_context(ProcessPoolExecutor(2, mp_context=context))

        async def pressure(burst: int) -> None:
            source.set(memory_percent=SCHEDULE[burst % len(SCHEDULE)])
            await sup.update_metrics()

        async def no_pressure(burst: int) -> None:
            return None

        aloop = asyncio.get_running_loop()

        def shared_pids() -> set[int]:
            # Private attributes, read only here: the interpreter-wide forkserver
            # (which the static pools use) and resource tracker.
            server = getattr(multiprocessing.forkserver, "_forkserver", None)
            tracker = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
            pids = {getattr(server, "_forkserver_pid", None), getattr(tracker, "_pid", None)}
            return {pid for pid in pids if pid is not None}

        def pool_pids(pool: ProcessPoolExecutor) -> set[int]:
            # The pool's live worker pids plus the forkserver they come from.
            server = getattr(multiprocessing.forkserver, "_forkserver", None)
            pids = set(getattr(pool, "_processes", None) or ())
            forkserver = getattr(server, "_forkserver_pid", None)
            return pids | ({forkserver} if forkserver is not None else set())

        def lane_pids() -> set[int]:
            others = pool_pids(static_max) | pool_pids(static_2) | shared_pids()
            return {p.pid for p in me.children(recursive=True)} - others

        me = psutil.Process()

        def case(
            name: str,
            submit: Callable[[], Awaitable[object]],
            before: Callable[[int], Awaitable[None]],
            pids: Callable[[], Iterable[int]],
        ) -> Case:
            return Case(name, lambda: workload(name, submit, before, pids))

        adaptive = f"adaptive process lane (max {MAX_WORKERS}), scripted pressure"
        cases = [
            case(
                adaptive,
                lambda: sup.executors.run_in_process(alloc_and_spin, 16, 0.02),
                pressure,
                lane_pids,
            ),
            case(
                f"static ProcessPoolExecutor({MAX_WORKERS})",
                lambda: aloop.run_in_executor(static_max, alloc_and_spin, 16, 0.02),
                no_pressure,
                lambda: pool_pids(static_max),
            ),
            case(
                "static ProcessPoolExecutor(2)",
                lambda: aloop.run_in_executor(static_2, alloc_and_spin, 16, 0.02),
                no_pressure,
                lambda: pool_pids(static_2),
            ),
        ]
        for c in cases:  # warm up: start the workers
            for _ in range(2):
                await c.measure()
        figures.clear()
        await ctx.compare(
            f"{bursts} bursts of {per_burst} calls (16 MiB, 20 ms each)",
            cases,
            unit="ms per completed call",
            baseline=f"static ProcessPoolExecutor({MAX_WORKERS})",
            rounds=ctx.scale(5, 2),
        )
        stats = sup.executors.metrics()
    rows = []
    for name, runs in figures.items():
        wall = statistics.median(r[0] for r in runs)
        done = statistics.median(r[1] for r in runs)
        shed = statistics.median(r[2] for r in runs)
        peak = statistics.median(r[3] for r in runs) / 2**20
        rows.append([name, f"{done / wall:.0f}", f"{done:.0f}", f"{shed:.0f}", f"{peak:.0f}"])
    ctx.table(
        "throughput and peak memory (median over rounds)",
        ["pool", "calls/s", "completed", "shed (OverloadedError)", "peak RSS MiB (parent + pool)"],
        rows,
    )
    ctx.note(
        "Pressure schedule per burst (memory %): "
        + ", ".join(f"{p:g}" for p in SCHEDULE)
        + "; queue_limit=4. Lane counters at the end: "
        + ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if k.startswith("process"))
    )
