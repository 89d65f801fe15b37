"""
Cost of one snapshot on the event loop: ``Sampler.sample()`` vs the psutil calls a
naive supervisor would make (virtual_memory, cpu_percent, memory_info, num_threads,
num_fds; and the same with memory_full_info).
"""

from __future__ import annotations

import time

import psutil

from ._harness import SuiteContext, Target, sequential_case


def _cost(fn: object, n: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) * 1e6 / n


async def run(ctx: SuiteContext) -> None:
    """
    Compare the per-snapshot cost of the sampler and of psutil.

    Cancellation:
        Propagates; the sampler is closed on the way out.
    """
    from resource_supervisor._sampler import Sampler

    n = ctx.scale(2_000, 500)
    proc = psutil.Process()
    proc.cpu_percent(None)
    psutil.cpu_percent(None)

    def psutil_default() -> None:
        psutil.virtual_memory()
        psutil.cpu_percent(None)
        proc.memory_info()
        proc.num_threads()
        proc.num_fds()

    def psutil_full() -> None:
        psutil_default()
        proc.memory_full_info()

    async def call_default() -> None:
        psutil_default()

    async def call_full() -> None:
        psutil_full()

    with Sampler() as sampler:
        await sampler.sample()
        name = "Sampler.sample() (kept-open preads)"
        await ctx.compare(
            f"one snapshot on the loop, {n} samples",
            [
                sequential_case(name, sampler.sample, n),
                sequential_case("psutil: vm+cpu+memory_info+threads+fds", call_default, n),
                sequential_case("psutil: same + memory_full_info", call_full, n // 4),
            ],
            unit="us/sample",
            baseline="psutil: vm+cpu+memory_info+threads+fds",
            targets=[Target("default sample <= 50 us on the loop", name, max_value=50.0)],
        )
        keys = len(await sampler.sample())
    singles = {
        "psutil.virtual_memory()": psutil.virtual_memory,
        "psutil.cpu_percent()": lambda: psutil.cpu_percent(None),
        "Process.memory_info()": proc.memory_info,
        "Process.memory_full_info()": proc.memory_full_info,
        "Process.num_threads()": proc.num_threads,
        "Process.num_fds()": proc.num_fds,
    }
    rows = [[k, f"{min(_cost(f, n // 10) for _ in range(3)):.1f}"] for k, f in singles.items()]
    ctx.table("single psutil calls (min of 3)", ["call", "us/call"], rows)
    rss = proc.memory_info().rss / 2**20
    ctx.note(f"The sampler returns {keys} metrics per sample. This process's RSS: {rss:.0f} MiB.")
