"""
The Dask backend (an owned ``LocalCluster`` on 127.0.0.1) vs the local process lane,
with the same worker count: per-call overhead, the break-even ``map_in_processes`` of
CPU-bound tasks (1 to 1000 ms, automatic chunks), the same tasks as separate
concurrent ``run_in_process`` calls (one Dask task each, so the per-task cost shows),
payload sizes with the event loop's maximum lag while submitting, and crash
behaviour (time to error, time until capacity is back, executions counted) under the
default policy and with ``dask.retries``.

The owned cluster is private by default (TLS with credentials made for it); a second
owned cluster with ``dask.tls: false`` (plain tcp) runs in every comparison beside it,
so the break-even table shows what TLS costs, measured in the same rounds.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ._harness import Case, Curve, SuiteContext, Target, median_ratio, sequential_case
from ._work import noop, payload_len, record_and_crash, spin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resource_supervisor.broker._executors import Executors

    from ._harness import Comparison

WORKERS = 2
TIME_LIMITS = {"quick": 300.0, "full": 900.0}  # three owned clusters (TLS, tcp, subprocess)
LOCAL = "local process lane"
DASK = "Dask LocalCluster lane (TLS, default)"
DASK_TCP = "Dask LocalCluster lane, plain tcp"
DASK_SUB = "Dask lane, scheduler in a subprocess"


class _LagProbe:
    """Tracks the worst lateness of a 1 ms ticker while it runs."""

    def __init__(self) -> None:
        self.worst_ms = 0.0

    async def tick(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(0.001)
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - before - 0.001) * 1e3)


def _tls_over_tcp(comparison: Comparison) -> float:
    """Median over rounds of the TLS lane's figure divided by the plain-tcp lane's."""
    return median_ratio(comparison.case(DASK).values, comparison.case(DASK_TCP).values)


def _per_call_row(comparison: Comparison) -> list[str]:
    tls, tcp = comparison.case(DASK).median, comparison.case(DASK_TCP).median
    local = comparison.case(LOCAL).median
    return [
        "trivial call, sequential (per call)",
        f"{tls / 1e3:.1f} ms vs {local:.0f} us",
        f"{tcp / 1e3:.1f} ms vs {local:.0f} us",
        f"{_tls_over_tcp(comparison):.2f}x",
    ]


def _breakeven_row(work: str, comparison: Comparison) -> list[str]:
    return [
        work,
        f"{comparison.case(DASK).ratio_median:.2f}x",
        f"{comparison.case(DASK_TCP).ratio_median:.2f}x",
        f"{_tls_over_tcp(comparison):.2f}x",
    ]


def _noop_call(executors: Executors) -> Callable[[], Awaitable[None]]:
    return lambda: executors.run_in_process(noop)


async def _batch(executors: Executors, seconds: float, tasks: int) -> float:
    """Run *tasks* CPU-bound calls of *seconds* at once; return the wall time in seconds."""
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(executors.run_in_process, spin, seconds)
    return time.perf_counter() - start


async def _map(executors: Executors, seconds: float, tasks: int) -> float:
    """Map *tasks* CPU-bound items of *seconds* (automatic chunks); return the wall time."""
    start = time.perf_counter()
    done = 0
    async for _ in executors.map_in_processes(spin, [seconds] * tasks, ordered=False):
        done += 1
    assert done == tasks
    return time.perf_counter() - start


async def _crash(executors: Executors) -> tuple[float, float, int, str]:
    """Crash one call; return (ms to error, ms until a call succeeds again, executions, error)."""
    with tempfile.TemporaryDirectory() as tmp:
        counter = Path(tmp) / "executions"
        counter.touch()
        start = time.perf_counter()
        try:
            await executors.run_in_process(record_and_crash, str(counter))
            error = "none"
        except Exception as exc:  # noqa: BLE001 - the error's type is the figure reported
            error = type(exc).__name__
        to_error = time.perf_counter() - start
        with anyio.fail_after(60):
            while True:
                try:
                    await executors.run_in_process(noop)
                    break
                except Exception:  # noqa: BLE001 - capacity not back yet; try again
                    await anyio.sleep(0.01)
        back = time.perf_counter() - start
        executions = len(counter.read_text().splitlines())
    return to_error * 1e3, back * 1e3, executions, error


async def run(ctx: SuiteContext) -> None:
    """
    Compare the Dask backend with the local lane.

    Cancellation:
        Propagates; both lanes (and the owned cluster) are closed on the way out.
    """
    import distributed  # noqa: F401 - skip early without the dask extra

    from resource_supervisor._config import ConcurrencySettings, DaskSettings
    from resource_supervisor.broker._executors import Executors

    def dask_settings(
        retries: int, *, subprocess: bool = False, tls: bool = True
    ) -> ConcurrencySettings:
        return ConcurrencySettings(
            backend="dask",
            dask=DaskSettings(
                n_workers=WORKERS,
                retries=retries,
                scheduler_in_subprocess=subprocess,
                tls=tls,
                connect_timeout=60.0,  # clusters start slowly on a busy machine
            ),
        )

    calls = ctx.scale(500, 100)
    lengths_ms = [1, 10, 20, 100, 1000] if not ctx.quick else [1, 10, 100]
    budget_s = ctx.scale(1.0, 0.3)  # CPU seconds per batch
    async with contextlib.AsyncExitStack() as stack:
        local = await stack.enter_async_context(
            Executors(ConcurrencySettings(), cpu_workers=WORKERS, io_workers=2)
        )
        started = time.perf_counter()
        dask = await stack.enter_async_context(
            Executors(dask_settings(0), cpu_workers=WORKERS, io_workers=2)
        )
        tls_start = time.perf_counter() - started
        started = time.perf_counter()
        dask_tcp = await stack.enter_async_context(
            Executors(dask_settings(0, tls=False), cpu_workers=WORKERS, io_workers=2)
        )
        ctx.note(
            f"Owned LocalCluster start: {tls_start:.1f} s with TLS (credentials made for it), "
            f"{time.perf_counter() - started:.1f} s on plain tcp."
        )
        lanes = {LOCAL: local, DASK: dask, DASK_TCP: dask_tcp}
        breakeven: list[tuple[str, Comparison]] = []
        for lane in lanes.values():
            await _batch(lane, 0.0, 4 * WORKERS)  # warm up every worker

        overhead = await ctx.compare(
            f"per-call overhead, trivial function, {calls} sequential calls",
            [sequential_case(k, _noop_call(e), calls) for k, e in lanes.items()],
            unit="us/call",
            baseline=LOCAL,
        )

        ratios: list[float] = []
        for ms in lengths_ms:
            # The target's case keeps its full size in quick runs: with 4 tasks, both
            # waves would be the one-item chunks sent before any timing is known.
            tasks = max(2 * WORKERS, round((1.0 if ms == 100 else budget_s) * 1000 / ms))
            ideal = tasks * ms / WORKERS

            def map_case(name: str, lane: Executors, ms: int = ms, tasks: int = tasks) -> Case:
                async def measure() -> float:
                    return await _map(lane, ms / 1000, tasks) * 1e3

                return Case(name, measure)

            targets = (
                [Target("Dask overhead < 5% at 100 ms tasks", DASK, LOCAL, max_ratio=1.05)]
                if ms == 100
                else []
            )
            comparison = await ctx.compare(
                f"map of {tasks} tasks of {ms} ms on {WORKERS} workers (ideal {ideal:.0f} ms)",
                [map_case(k, e) for k, e in lanes.items()],
                unit="ms (map)",
                baseline=LOCAL,
                targets=targets,
                rounds=ctx.rounds if ms < 1000 else 2,
            )
            ratios.append(comparison.case(DASK).ratio_median)
            breakeven.append((f"`map_in_processes`, {tasks} tasks of {ms} ms", comparison))
        ctx.curve(
            Curve(
                "Dask / local map time",
                tuple(float(ms) for ms in lengths_ms),
                tuple(ratios),
                "task length (ms)",
                "ratio (1.0 = same as local)",
                log_x=True,
            )
        )

        calls_100 = max(2 * WORKERS, round(budget_s * 10))

        def batch_case(name: str, lane: Executors) -> Case:
            async def measure() -> float:
                return await _batch(lane, 0.1, calls_100) * 1e3

            return Case(name, measure)

        batch = await ctx.compare(
            f"{calls_100} concurrent run_in_process calls of 100 ms on {WORKERS} workers "
            f"(one Dask task each; ideal {calls_100 * 100 / WORKERS:.0f} ms)",
            [batch_case(k, e) for k, e in lanes.items()],
            unit="ms (batch)",
            baseline=LOCAL,
        )
        breakeven.append((f"{calls_100} concurrent `run_in_process` calls of 100 ms", batch))
        ctx.table(
            "break-even: Dask against the local lane, with TLS (default) and on plain tcp",
            ["work", "Dask TLS / local", "Dask tcp / local", "TLS / tcp"],
            [_per_call_row(overhead), *(_breakeven_row(w, c) for w, c in breakeven)],
        )

        sizes = [1024, 1024**2, 16 * 1024**2] + ([64 * 1024**2] if not ctx.quick else [])
        rows: list[list[str]] = []
        # An owned scheduler runs on this event loop and handles every payload too;
        # in a subprocess it does not (dask.scheduler_in_subprocess).
        subprocess_lane = await stack.enter_async_context(
            Executors(dask_settings(0, subprocess=True), cpu_workers=WORKERS, io_workers=2)
        )
        await _batch(subprocess_lane, 0.0, 2 * WORKERS)
        for size in sizes:
            payload = bytes(size)
            for name, lane in [*lanes.items(), (DASK_SUB, subprocess_lane)]:
                times: list[float] = []
                worst: list[float] = []
                for _ in range(3):
                    probe = _LagProbe()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(probe.tick)
                        await anyio.sleep(0.005)
                        start = time.perf_counter()
                        await lane.run_in_process(payload_len, payload)
                        times.append((time.perf_counter() - start) * 1e3)
                        tg.cancel_scope.cancel()
                    worst.append(probe.worst_ms)
                rows.append(
                    [
                        f"{size / 1024:,.0f} KiB",
                        name,
                        f"{statistics.median(times):.2f}",
                        f"{max(worst):.2f}",
                    ]
                )
        ctx.table(
            "payload sizes (3 calls each)",
            ["payload", "lane", "median ms/call", "max loop lag ms"],
            rows,
        )

        crash_rows: list[list[str]] = []
        for name, lane in [(LOCAL, local), (DASK, dask)]:
            to_error, back, executions, error = await _crash(lane)
            crash_rows.append(
                [name, "default", error, f"{to_error:.0f}", f"{back:.0f}", str(executions)]
            )
        await stack.aclose()
    async with Executors(dask_settings(1), cpu_workers=WORKERS, io_workers=2) as retrying:
        await _batch(retrying, 0.0, 2 * WORKERS)
        to_error, back, executions, error = await _crash(retrying)
        crash_rows.append(
            [DASK, "retries=1", error, f"{to_error:.0f}", f"{back:.0f}", str(executions)]
        )
    ctx.table(
        "a call whose worker dies (os._exit)",
        ["lane", "policy", "error", "ms to error", "ms until capacity back", "executions"],
        crash_rows,
    )
