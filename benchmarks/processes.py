"""
Process lane (``Executors.run_in_process``, 2 workers) vs
``loop.run_in_executor(ProcessPoolExecutor(2))`` vs ``anyio.to_process.run_sync``
(limited to 2) vs loky (``get_reusable_executor(2)`` + ``asyncio.wrap_future``).

A trivial module-level function, called sequentially and from 16 callers. The
lane and the ProcessPoolExecutor both use forkserver workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import anyio
import anyio.to_process

from ._harness import SuiteContext, Target, concurrent_case, sequential_case, time_concurrent
from ._work import noop

WORKERS = 2
LANE = "process lane (run_in_process)"
PPE = "run_in_executor(ProcessPoolExecutor(2))"


async def run(ctx: SuiteContext) -> None:
    """
    Compare per-call overhead of the process lanes.

    Cancellation:
        Propagates; every pool is shut down on the way out.
    """
    from resource_supervisor._config import ConcurrencySettings
    from resource_supervisor.broker._executors import Executors

    n = ctx.scale(2_000, 400)
    loop = asyncio.get_running_loop()
    limiter = anyio.CapacityLimiter(WORKERS)
    async with contextlib.AsyncExitStack() as stack:
        executors = await stack.enter_async_context(
            Executors(ConcurrencySettings(), cpu_workers=WORKERS, io_workers=2)
        )
        pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver"))
        stack.callback(pool.shutdown)
        calls = {
            LANE: lambda: executors.run_in_process(noop),
            PPE: lambda: loop.run_in_executor(pool, noop),
            "anyio.to_process.run_sync": lambda: anyio.to_process.run_sync(noop, limiter=limiter),
        }
        try:
            import loky

            executor = loky.get_reusable_executor(WORKERS)
            calls["loky + asyncio.wrap_future"] = lambda: asyncio.wrap_future(executor.submit(noop))
        except ImportError:
            ctx.note("loky is not installed: its row is missing.")
        for call in calls.values():  # warm up: start every worker
            await time_concurrent(call, 64, 16)
        await ctx.compare(
            f"sequential, {n} calls",
            [sequential_case(k, c, n) for k, c in calls.items()],
            unit="us/call",
            baseline=PPE,
            targets=[
                Target(
                    "process lane <= 1.0x ProcessPoolExecutor, sequential", LANE, PPE, max_ratio=1.0
                )
            ],
        )
        await ctx.compare(
            f"16 callers, {n} calls",
            [concurrent_case(k, c, n, 16) for k, c in calls.items()],
            unit="us/call",
            baseline=PPE,
            targets=[
                Target(
                    "process lane <= 1.0x ProcessPoolExecutor, 16 callers", LANE, PPE, max_ratio=1.0
                )
            ],
        )
    ctx.note(f"{WORKERS} workers each; the lane and the ProcessPoolExecutor use forkserver.")
