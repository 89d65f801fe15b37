"""
Thread lane vs ``anyio.to_thread.run_sync`` vs ``loop.run_in_executor(ThreadPoolExecutor)``.

A trivial function, called sequentially and from 100 concurrent callers. The lane
and the executor get the same thread count, CPython's default ``min(32, cpus + 4)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread

from ._harness import (
    SuiteContext,
    Target,
    concurrent_case,
    sequential_case,
    time_concurrent,
)


def _nothing() -> None:
    return None


async def run(ctx: SuiteContext) -> None:
    """
    Compare per-call overhead of the thread lanes.

    Cancellation:
        Propagates; the lane and the executor are closed on the way out.
    """
    from resource_supervisor.broker._threads import ThreadLane

    threads = min(32, len(os.sched_getaffinity(0)) + 4)
    n = ctx.scale(10_000, 3_000)
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        lane = await stack.enter_async_context(ThreadLane(threads))
        pool = stack.enter_context(ThreadPoolExecutor(threads))

        calls = {
            "thread lane (ThreadLane.run)": lambda: lane.run(_nothing),
            "anyio.to_thread.run_sync": lambda: anyio.to_thread.run_sync(_nothing),
            "run_in_executor(ThreadPoolExecutor)": lambda: loop.run_in_executor(pool, _nothing),
        }
        for call in calls.values():  # warm up: start threads
            await time_concurrent(call, 200, 100)
        lane_name, anyio_name = "thread lane (ThreadLane.run)", "anyio.to_thread.run_sync"

        await ctx.compare(
            f"sequential, {n} calls",
            [sequential_case(k, c, n) for k, c in calls.items()],
            unit="us/call",
            baseline=anyio_name,
            targets=[
                Target(
                    "thread lane <= 1.0x anyio.to_thread, sequential",
                    lane_name,
                    anyio_name,
                    max_ratio=1.0,
                )
            ],
        )
        await ctx.compare(
            f"100 callers, {n} calls",
            [concurrent_case(k, c, n, 100) for k, c in calls.items()],
            unit="us/call",
            baseline=anyio_name,
            targets=[
                Target(
                    "thread lane <= 0.5x anyio.to_thread, 100 callers",
                    lane_name,
                    anyio_name,
                    max_ratio=0.5,
                )
            ],
        )
    ctx.note(
        f"{threads} threads for the lane and the ThreadPoolExecutor; anyio's default limiter (40)."
    )
