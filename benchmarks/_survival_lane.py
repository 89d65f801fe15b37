"""
The ``lane`` scenario of :mod:`benchmarks._survival_child`: bursty CPU work whose
workers and caches grow, on the supervised adaptive lane or a static pool.

Every call holds ``call_mib`` MiB while it spins ``call_seconds`` and its worker keeps
``keep_mib`` MiB of it for good; the service's own cache grows by ``cache_mib`` per
burst. On the ``adaptive`` lane a supervisor samples the cgroup, cleans the cache,
shrinks the lane under pressure and recycles workers past ``worker_max_rss_bytes``.
The static pool (``ProcessPoolExecutor`` with the forkserver, as the lane uses) has
no supervisor: nothing frees the cache, and a pool one of whose workers the kernel
kills is broken for every later call, as in a service that uses it directly.

Lines printed: ``series`` records every 50 ms when asked, ``cleanup`` records, and a
final ``done`` record with completed, lost and shed calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import psutil

from benchmarks._survival_child import (
    SERIES_PERIOD,
    Cache,
    emit,
    settings_for,
    touched,
    usage_reader,
)
from benchmarks._work import grow_and_spin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

MiB = 1024 * 1024


class Tally:
    """Calls completed, lost (failed for any reason but shedding) and shed."""

    def __init__(self) -> None:
        self.completed = 0
        self.lost = 0
        self.shed = 0
        self.errors: dict[str, int] = {}

    def fail(self, exc: BaseException) -> None:
        """Count one lost call by the error's type."""
        self.lost += 1
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def _bursts(
    config: dict[str, Any], submit: Callable[[], Awaitable[object]], tally: Tally, cache: Cache
) -> None:
    from resource_supervisor import OverloadedError

    async def one() -> None:
        try:
            await submit()
        except OverloadedError:
            tally.shed += 1
        except Exception as exc:  # noqa: BLE001 - every other failure is a lost call
            tally.fail(exc)
        else:
            tally.completed += 1

    for _ in range(config["bursts"]):
        cache.entries.append(touched(config["cache_mib"] * MiB))
        async with anyio.create_task_group() as tg:
            for _ in range(config["per_burst"]):
                tg.start_soon(one)
        await anyio.sleep(config["gap_seconds"])


async def _series(
    begin: float,
    usage: Callable[[], int],
    tally: Tally,
    level: Callable[[], str],
    workers: Callable[[], int],
) -> None:
    while True:
        emit(
            kind="series",
            t=time.perf_counter() - begin,
            used=usage(),
            level=level(),
            workers=workers(),
            completed=tally.completed,
        )
        await anyio.sleep(SERIES_PERIOD)


def _live_children() -> int:
    """Worker processes of this service's pool now: the forkserver's children."""
    count = 0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "forkserver" in " ".join(child.cmdline()):
                count += len(child.children())
    return count


async def lane(config: dict[str, Any]) -> None:
    """
    Run the bursts on the configured lane and print what happened.

    Cancellation:
        Propagates; the supervisor or pool is closed on the way out.
    """
    usage = usage_reader(config["cgroup"])
    tally = Tally()
    cache = Cache()
    args = (config["call_mib"], config["call_seconds"], config["keep_mib"])
    begin = time.perf_counter()
    if config["mode"] == "adaptive":
        from resource_supervisor import CleanupCompleted, Supervisor

        async with Supervisor(settings_for(config)) as sup, anyio.create_task_group() as tg:
            sup.register_cleanup(cache, name="cache")

            async def cleanups() -> None:
                with sup.subscribe_events(buffer=256) as events:
                    async for event in events:
                        if isinstance(event, CleanupCompleted):
                            report = event.report
                            emit(
                                kind="cleanup",
                                t=time.perf_counter() - begin,
                                freed=report.bytes_freed,
                                aggressive=report.request.aggressive,
                            )

            def workers() -> int:
                return int(sup.metrics.get("process_workers_live", 0))

            tg.start_soon(cleanups)
            if config.get("series"):
                tg.start_soon(_series, begin, usage, tally, lambda: sup.level.name, workers)

            async def submit() -> object:
                return await sup.executors.run_in_process(grow_and_spin, *args)

            await _bursts(config, submit, tally, cache)
            tg.cancel_scope.cancel()
    else:
        context = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(config["static_workers"], mp_context=context)
        try:
            async with anyio.create_task_group() as tg:
                if config.get("series"):
                    tg.start_soon(_series, begin, usage, tally, lambda: "-", _live_children)
                loop = asyncio.get_running_loop()

                async def submit() -> object:
                    return await loop.run_in_executor(pool, grow_and_spin, *args)

                await _bursts(config, submit, tally, cache)
                tg.cancel_scope.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - begin
    emit(
        kind="done",
        done=True,
        wall=wall,
        completed=tally.completed,
        lost=tally.lost,
        shed=tally.shed,
        errors=tally.errors,
    )
