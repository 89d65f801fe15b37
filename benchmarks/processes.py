"""
Process lane (``Executors.run_in_process``, 2 workers) vs
``loop.run_in_executor(ProcessPoolExecutor(2))`` vs ``anyio.to_process.run_sync``
(limited to 2) vs loky (``get_reusable_executor(2)`` + ``asyncio.wrap_future``).

A trivial module-level function, called sequentially and from 16 callers. The
lane and the ProcessPoolExecutor both use forkserver workers.

Payloads: the event loop's worst lag (a 1 ms ticker) while the lane takes a big
argument and returns a big result, ``str``, ``bytes`` and a list of small
``bytes`` (1, 16, 64 and 500 MiB; up to 64 MiB in quick runs), median and max
over three calls, beside ``run_in_executor(ProcessPoolExecutor)`` doing the same
at the largest size; the target is under 10 ms on the loop for the lane. The
lane's medians are also plotted against the size.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import anyio
import anyio.to_process

from ._harness import (
    Curve,
    SuiteContext,
    Target,
    concurrent_case,
    sequential_case,
    time_concurrent,
)
from ._work import noop

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resource_supervisor.broker._executors import Executors

WORKERS = 2
TIME_LIMITS = {"quick": 90.0, "full": 420.0}
"""The payload table moves hundreds of MiB per call: more time than the default."""
LANE = "process lane (run_in_process)"
PPE = "run_in_executor(ProcessPoolExecutor(2))"


def text_length(text: str) -> int:
    """Return the length of a str argument (run in the workers)."""
    return len(text)


def make_bytes(size: int) -> bytes:
    """Return *size* bytes (run in the workers)."""
    return bytes(size)


KINDS = ("str", "bytes", "list of 1 KiB bytes")
"""Payload kinds: a ``str``, a ``bytes``, and a plain object (no NumPy) of many items."""


def make_payload(kind: str, size: int) -> object:
    """Return a payload of *kind* about *size* bytes big (in the service or a worker)."""
    if kind == "str":
        return "x" * size
    if kind == "bytes":
        return bytes(size)
    return [bytes(1024) for _ in range(size // 1024)]


def payload_length(payload: str | bytes | list[bytes]) -> int:
    """Return the length of an argument (run in the workers)."""
    return len(payload)


async def _worst_lag_ms(call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Run *call* beside a 1 ms ticker: (the ticker's worst lateness, the call's time), ms."""
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        result = await call()
        took = time.perf_counter() - start
        await asyncio.sleep(0.01)
        tg.cancel_scope.cancel()
    del result  # after the ticker: freeing a big result is the caller's part, not the call's
    return worst * 1e3, took * 1e3


async def _payloads(ctx: SuiteContext, executors: Executors, pool: ProcessPoolExecutor) -> None:
    """
    The payload table: the loop's worst lag while a big argument goes out or a big
    result comes back, per kind and size (median and max over 3 calls), with
    ``run_in_executor(ProcessPoolExecutor)`` beside the lane at the largest size.
    """
    sizes = [s * 1024 * 1024 for s in ctx.scale((1, 16, 64, 500), (1, 16, 64))]
    loop = asyncio.get_running_loop()
    rows = []
    medians: dict[str, list[float]] = {}

    async def measure(name: str, size: int, call: Callable[[], Awaitable[object]]) -> None:
        runs = [await _worst_lag_ms(call) for _ in range(3)]
        lags = sorted(lag for lag, _ in runs)
        if name.startswith(LANE):
            medians.setdefault(name.removeprefix(f"{LANE}, "), []).append(lags[1])
        rows.append(
            [
                name,
                f"{size >> 20} MiB",
                f"{lags[1]:.1f}",
                f"{lags[-1]:.1f}",
                f"{sorted(took for _, took in runs)[1]:.0f}",
            ]
        )

    await measure("nothing (the ticker alone: this machine's noise)", 0, lambda: asyncio.sleep(0.3))
    for size in sizes:
        for kind in KINDS:
            argument = make_payload(kind, size)
            await measure(
                f"{LANE}, {kind} argument",
                size,
                lambda a=argument: executors.run_in_process(payload_length, a),  # type: ignore[misc]
            )
            if size == sizes[-1]:
                await measure(
                    f"{PPE}, {kind} argument",
                    size,
                    lambda a=argument: loop.run_in_executor(pool, payload_length, a),  # type: ignore[misc]
                )
            del argument
            await measure(
                f"{LANE}, {kind} result",
                size,
                lambda k=kind, s=size: executors.run_in_process(make_payload, k, s),  # type: ignore[misc]
            )
            if size == sizes[-1]:
                await measure(
                    f"{PPE}, {kind} result",
                    size,
                    lambda k=kind, s=size: loop.run_in_executor(pool, make_payload, k, s),  # type: ignore[misc]
                )
    for name, lags in medians.items():
        ctx.curve(
            Curve(
                f"lane, {name}",
                tuple(float(size >> 20) for size in sizes),
                tuple(lags),
                "payload MiB",
                "median worst loop lag ms (3 calls)",
                log_x=True,
            )
        )
    ctx.table(
        "big payloads: worst event-loop lag of a 1 ms ticker (3 calls each)",
        ["call", "payload", "median worst lag ms", "max worst lag ms", "median ms/call"],
        rows,
    )
    ctx.note(
        "Target: the lane keeps a big payload's time on the loop under 10 ms. A lag row "
        "includes the ticker's own noise (first row); the result is freed after the ticker "
        "stops (freeing it is the caller's part, not the call's)."
    )


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
        await _payloads(ctx, executors, pool)
    ctx.note(f"{WORKERS} workers each; the lane and the ProcessPoolExecutor use forkserver.")
