"""
``Executors.map_in_processes`` vs ``ProcessPoolExecutor.map`` with ``chunksize=1`` and
with the auto chunksize ``N / (4 * workers)``, vs loky with the same chunksize, vs the
in-process pickle round trip (the floor: what any process map must at least pay).

Two workloads: tiny items (``x * x``) and heavier ones (about 1 ms of CPU each).
``chunksize=1`` is timed on fewer items (it costs about 100 us per item) and
reported per item like the others.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TYPE_CHECKING

import anyio.to_thread

from ._harness import Case, SuiteContext, Target
from ._work import spin, square

if TYPE_CHECKING:
    from collections.abc import Callable

WORKERS = 2
LANE = "map_in_processes"
FLOOR = "pickle round trip per item, in-process (floor)"
CS1 = "ProcessPoolExecutor.map chunksize=1"


def _pickle_floor(func: Callable[[int], object], items: range) -> None:
    """Pickle each item out and its result back, in this process: no IPC, no workers."""
    dumps, loads = pickle.dumps, pickle.loads
    for x in items:
        loads(dumps(func(loads(dumps(x)))))


def _pickle_chunks(func: Callable[[int], object], items: range, chunksize: int) -> None:
    """Pickle each chunk out and its results back, in this process."""
    for start in range(0, len(items), chunksize):
        chunk = pickle.loads(pickle.dumps(list(items[start : start + chunksize]), 5))
        pickle.loads(pickle.dumps([func(x) for x in chunk], 5))


async def run(ctx: SuiteContext) -> None:
    """
    Compare per-item cost of process maps.

    Cancellation:
        Propagates; every pool is shut down on the way out.
    """
    from resource_supervisor._config import ConcurrencySettings
    from resource_supervisor.broker._executors import Executors

    n = ctx.scale(100_000, 20_000)
    n_cs1 = ctx.scale(2_000, 500)
    auto = max(1, n // (4 * WORKERS))
    async with contextlib.AsyncExitStack() as stack:
        executors = await stack.enter_async_context(
            Executors(ConcurrencySettings(), cpu_workers=WORKERS, io_workers=2)
        )
        pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver"))
        stack.callback(pool.shutdown)
        pools: dict[str, Executor] = {"ProcessPoolExecutor": pool}
        try:
            import loky

            pools["loky"] = loky.get_reusable_executor(WORKERS)
        except ImportError:
            ctx.note("loky is not installed: its row is missing.")

        def lane_case(func: Callable[[int], object], count: int) -> Case:
            async def measure() -> float:
                start = time.perf_counter()
                async for _ in executors.map_in_processes(func, range(count)):
                    pass
                return (time.perf_counter() - start) * 1e6 / count

            return Case(LANE, measure)

        def pool_case(
            name: str, executor: Executor, func: Callable[[int], object], count: int, chunk: int
        ) -> Case:
            def blocking() -> None:
                for _ in executor.map(func, range(count), chunksize=chunk):
                    pass

            async def measure() -> float:
                start = time.perf_counter()
                await anyio.to_thread.run_sync(blocking)
                return (time.perf_counter() - start) * 1e6 / count

            return Case(name, measure)

        def floor_case(func: Callable[[int], object], count: int, chunk: int) -> Case:
            async def measure() -> float:
                start = time.perf_counter()
                if chunk:
                    _pickle_chunks(func, range(count), chunk)
                else:
                    _pickle_floor(func, range(count))
                return (time.perf_counter() - start) * 1e6 / count

            return Case(f"pickle round trip per chunk of {chunk}" if chunk else FLOOR, measure)

        for warm in [
            lane_case(square, 1000),
            *(pool_case("", p, square, 1000, 100) for p in pools.values()),
        ]:
            await warm.measure()
        cases = [
            lane_case(square, n),
            pool_case(CS1, pool, square, n_cs1, 1),
            pool_case(f"ProcessPoolExecutor.map chunksize={auto} (auto)", pool, square, n, auto),
            *(
                pool_case(f"loky map chunksize={auto}", p, square, n, auto)
                for k, p in pools.items()
                if k == "loky"
            ),
            floor_case(square, n, 0),
            floor_case(square, n, auto),
        ]
        await ctx.compare(
            f"x*x over {n:,} items ({n_cs1:,} for chunksize=1), {WORKERS} workers",
            cases,
            unit="us/item",
            baseline=FLOOR,
            targets=[
                Target("async map within 1.5x of the pickle floor", LANE, FLOOR, max_ratio=1.5),
                Target("async map >= 100x faster than chunksize=1", LANE, CS1, min_speedup=100.0),
            ],
        )

        heavy = ctx.scale(400, 100)
        heavy_auto = max(1, heavy // (4 * WORKERS))
        spin_1ms = _Spin1ms()
        ideal = 1000.0 / WORKERS
        await ctx.compare(
            f"about 1 ms of CPU per item, {heavy} items, {WORKERS} workers",
            [
                lane_case(spin_1ms, heavy),
                pool_case(CS1, pool, spin_1ms, heavy, 1),
                pool_case(
                    f"ProcessPoolExecutor.map chunksize={heavy_auto} (auto)",
                    pool,
                    spin_1ms,
                    heavy,
                    heavy_auto,
                ),
            ],
            unit="us/item",
            baseline=CS1,
            note=f"Ideal with {WORKERS} busy workers: {ideal:.0f} us/item.",
        )


class _Spin1ms:
    """A picklable callable spinning 1 ms per item (module-level, importable by workers)."""

    def __call__(self, x: int) -> int:
        spin(0.001)
        return x
