"""
One cold-start sample, run as ``python -m benchmarks._cold_child CASE`` in a fresh process.

Prints the milliseconds from just before the first call (every import already done,
the supervisor's executors already entered) to its result. Workers import this
module as their ``__main__``: everything below is guarded.
"""

from __future__ import annotations

import sys
import time

from benchmarks._work import noop

CASES = ("stdlib", "lane", "lane-prestarted", "anyio")


async def _lane(*, prestart: bool) -> float:
    import anyio

    from resource_supervisor._config import ConcurrencySettings
    from resource_supervisor.broker._executors import Executors

    settings = ConcurrencySettings(prestart_process_lane=prestart)
    async with Executors(settings, cpu_workers=2, io_workers=2) as executors:
        if prestart:
            await anyio.sleep(0.5)  # the service runs a while before its first call
        start = time.perf_counter()
        await executors.run_in_process(noop)
        return time.perf_counter() - start


async def _anyio() -> float:
    import anyio.to_process

    start = time.perf_counter()
    await anyio.to_process.run_sync(noop)
    return time.perf_counter() - start


def _stdlib() -> float:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver"))
    pool.submit(noop).result()
    seconds = time.perf_counter() - start
    pool.shutdown()
    return seconds


def main(case: str) -> float:
    """Run one sample of *case* and return its seconds to the first result."""
    import asyncio

    if case == "stdlib":
        return _stdlib()
    if case == "anyio":
        return asyncio.run(_anyio())
    return asyncio.run(_lane(prestart=case == "lane-prestarted"))


if __name__ == "__main__":
    print(f"{main(sys.argv[1]) * 1000:.3f}")
