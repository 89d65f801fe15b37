"""
Event-loop lag of a 1 ms ticker: idle, with the supervisor sampling every 100 ms,
and with a naive full psutil sample (``memory_full_info`` included) on the loop every
100 ms. The figure is the p99 of how late each tick wakes up.
"""

from __future__ import annotations

import time

import anyio
import psutil

from ._harness import Case, SuiteContext, Target, percentile

INTERVAL = 0.1
IDLE = "idle loop"
SUP = "Supervisor, monitoring_interval=0.1"


async def ticker(seconds: float) -> list[float]:
    """
    Sleep 1 ms at a time for *seconds*; return each tick's lateness in microseconds.

    Cancellation:
        Propagates at the next tick.
    """
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while True:
        before = time.perf_counter()
        if before >= end:
            return lags
        await anyio.sleep(0.001)
        lags.append((time.perf_counter() - before - 0.001) * 1e6)


async def run(ctx: SuiteContext) -> None:
    """
    Compare the p99 lag of a 1 ms ticker with and without the supervisor.

    Cancellation:
        Propagates; the supervisor is closed on the way out.
    """
    from resource_supervisor._config import SupervisorSettings
    from resource_supervisor._supervisor import Supervisor

    seconds = ctx.scale(5, 1.5)
    settings = SupervisorSettings(monitoring_interval=INTERVAL)

    async def idle() -> float:
        return percentile(await ticker(seconds), 99)

    async def supervised() -> float:
        async with Supervisor(settings):
            await anyio.sleep(INTERVAL)  # past the first sample, into the loop
            return percentile(await ticker(seconds), 99)

    async def naive() -> float:
        proc = psutil.Process()

        async def sample_forever() -> None:
            while True:
                await anyio.sleep(INTERVAL)
                psutil.virtual_memory()
                psutil.cpu_percent(None)
                proc.memory_full_info()
                proc.num_threads()
                proc.num_fds()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample_forever)
            lag = percentile(await ticker(seconds), 99)
            tg.cancel_scope.cancel()
        return lag

    await ctx.compare(
        f"p99 lateness of a 1 ms ticker over {seconds} s",
        [
            Case(IDLE, idle),
            Case(SUP, supervised),
            Case("naive psutil sample (memory_full_info) every 0.1 s", naive),
        ],
        unit="us (p99)",
        baseline=IDLE,
        targets=[
            Target(
                "loop-lag p99 with the supervisor at 100 ms within 1.05x of idle",
                SUP,
                IDLE,
                max_ratio=1.05,
            )
        ],
        note="asyncio default loop. The p99 of an idle loop is mostly timer slack and OS noise.",
    )
