"""
Cost of one snapshot on the event loop: ``Sampler.sample()`` vs the psutil calls a
naive supervisor would make (virtual_memory, cpu_percent, memory_info, num_threads,
num_fds; and the same with memory_full_info).

Samples back to back run with warm caches; a service samples after an idle
interval, when CPU caches and the kernel's per-file state are cold. The second part
measures that case: one ``Sampler.sample()`` and one ``Supervisor.update_metrics()``
(sample, snapshot build, grading, publishing) after at least 100 ms of idle loop,
median and p99, and which read costs what after idle. The sampler reads its files in
a thread of its own while the loop waits, so the figure that matters is the loop's
own time: the CPU time of the loop's thread from the call to its return
(``time.thread_time()``, which counts neither the reading thread nor the loop's
waits), beside the same read pass run on the loop, and the wall time.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import anyio
import psutil

from ._harness import Case, SuiteContext, Target, percentile, sequential_case

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

IDLE_SECONDS = 0.1


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
        name = "Sampler.sample(): loop CPU"

        async def loop_cpu() -> float:
            start = time.thread_time()
            for _ in range(n):
                await sampler.sample()
            return (time.thread_time() - start) * 1e6 / n

        await ctx.compare(
            f"one snapshot, {n} samples back to back (psutil runs on the loop)",
            [
                Case(name, loop_cpu),
                sequential_case("Sampler.sample(): wall", sampler.sample, n),
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
    await _after_idle(ctx)


async def _idle_samples(
    call: Callable[[], Awaitable[object]], count: int, *, clock: Callable[[], float]
) -> list[float]:
    """Microseconds of *call* by *clock* after IDLE_SECONDS of idle loop each time."""
    values = []
    for _ in range(count):
        await anyio.sleep(IDLE_SECONDS)
        start = clock()
        await call()
        values.append((clock() - start) * 1e6)
    return values


async def _after_idle(ctx: SuiteContext) -> None:
    """The on-loop cost of one sample after an idle interval."""
    from resource_supervisor import Supervisor, SupervisorSettings
    from resource_supervisor._sampler import Sampler

    count = ctx.scale(40, 15)
    every: dict[str, list[float]] = {}
    settings = SupervisorSettings(monitoring_enabled=False)
    with Sampler() as sampler:
        async with Supervisor(settings) as sup:

            async def reads_on_the_loop() -> None:
                sampler._read_core_locked()

            sample = "Sampler.sample(): loop CPU"
            full = "Supervisor.update_metrics(): loop CPU"
            on_loop = "the same reads on the loop: loop CPU"
            calls: dict[str, tuple[Callable[[], Awaitable[object]], Callable[[], float]]] = {
                on_loop: (reads_on_the_loop, time.thread_time),
                sample: (sampler.sample, time.thread_time),
                "Sampler.sample(): wall": (sampler.sample, time.perf_counter),
                full: (sup.update_metrics, time.thread_time),
            }

            def case(name: str) -> Case:
                async def measure() -> float:
                    call, clock = calls[name]
                    values = await _idle_samples(call, count, clock=clock)
                    every.setdefault(name, []).extend(values)
                    return statistics.median(values)

                return Case(name, measure)

            await ctx.compare(
                f"one sample after {IDLE_SECONDS * 1000:.0f} ms idle, the loop's own time "
                f"({count} samples per round)",
                [case(name) for name in calls],
                unit="us/sample (median)",
                baseline=on_loop,
                targets=[
                    Target("sample after idle <= 100 us on the loop", sample, max_value=100.0),
                    Target("full pass after idle <= 100 us on the loop", full, max_value=100.0),
                ],
                rounds=ctx.scale(5, 3),
            )
        ctx.table(
            "one sample after 100 ms idle, every sample",
            ["case", "samples", "median us", "p99 us"],
            [
                [name, str(len(v)), f"{statistics.median(v):.0f}", f"{percentile(v, 99):.0f}"]
                for name, v in every.items()
            ],
        )
        await _breakdown(ctx, sampler, count)


async def _breakdown(ctx: SuiteContext, sampler: object, count: int) -> None:
    """Each read after idle: the whole read, and its os.pread alone."""
    import os

    from resource_supervisor._sampler import Sampler

    assert isinstance(sampler, Sampler)
    proc, cgroup, psi = sampler._proc, sampler._cgroup, sampler._psi
    host = sampler._read_host_memory()
    reads: dict[str, Callable[[], object]] = {
        "host memory (/proc/meminfo)": sampler._read_host_memory,
        "memory cgroup (limits, usage, stat)": lambda: sampler._read_memory_figures(host),
        "CPU times (/proc/stat)": proc.read_cpu_times,
        "process stat (/proc/self/stat)": proc.read_process_stat,
        "process RSS (statm)": proc.read_rss_bytes,
        "open fds (listdir /proc/self/fd)": proc.read_fd_count,
        "PSI (memory.pressure)": psi.read,
    }
    kept: dict[str, int] = getattr(proc, "_fds", {})
    fds = {
        name: fd
        for name, fd in (
            ("/proc/meminfo", kept.get("meminfo")),
            ("/proc/stat", kept.get("stat")),
            ("/proc/self/stat", kept.get("pid_stat")),
            ("memory.stat", getattr(cgroup, "_stat_fd", None)),
        )
        if isinstance(fd, int)
    }
    rows = []
    for name, read in reads.items():
        values = []
        for _ in range(count):
            await anyio.sleep(IDLE_SECONDS)
            start = time.perf_counter()
            read()
            values.append((time.perf_counter() - start) * 1e6)
        rows.append([name, f"{statistics.median(values):.1f}"])
    for name, fd in fds.items():
        values = []
        for _ in range(count):
            await anyio.sleep(IDLE_SECONDS)
            start = time.perf_counter()
            os.pread(fd, 65536, 0)
            values.append((time.perf_counter() - start) * 1e6)
        rows.append([f"os.pread alone: {name}", f"{statistics.median(values):.1f}"])
    ctx.table("each read after 100 ms idle (median)", ["read", "us"], rows)
