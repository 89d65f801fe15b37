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

The third part is the way a service pays for sampling: a supervisor sampling on its
timer every 100 ms, nothing else on the loop. Its cost per sample is all the CPU
time of the loop's thread from one published snapshot to the next, the loop's
wake-up included, beside an idle loop that only wakes on a 100 ms timer (the
floor any periodic work pays) and beside the same supervisor with its reads handed
to the sampler's thread at each deadline (two wake-ups per sample) instead of read
ahead by the thread (one).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import TYPE_CHECKING, Any

import anyio
import psutil

from ._harness import Case, SuiteContext, Target, percentile, sequential_case

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

IDLE_SECONDS = 0.1
TIME_LIMITS = {"quick": 90.0, "full": 300.0}  # seconds: each part samples on a 100 ms timer


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
    await _on_a_timer(ctx)


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


async def _timer_samples(count: int, *, read_ahead: bool) -> tuple[list[float], list[float]]:
    """
    Loop CPU (us) per timer sample of a supervisor sampling every IDLE_SECONDS, and the
    loop CPU of each Sampler.sample() within it.
    """
    from resource_supervisor import Supervisor, SupervisorSettings
    from resource_supervisor._sampler import Sampler

    settings = SupervisorSettings(monitoring_interval=IDLE_SECONDS, warning_threshold_cpu=100.0)
    marks: list[float] = []
    sampling: list[float] = []
    enough = anyio.Event()
    async with Supervisor(settings) as sup:
        if not read_ahead:
            sup._timer._reader = None
        sampler = sup._source
        assert isinstance(sampler, Sampler)
        sample, publish = sampler.sample, sup._publish

        async def timed_sample(**kwargs: Any) -> dict[str, Any]:
            start = time.thread_time()
            try:
                return await sample(**kwargs)
            finally:
                sampling.append((time.thread_time() - start) * 1e6)

        def marked_publish(snapshot: Any) -> None:
            publish(snapshot)
            marks.append(time.thread_time())
            if len(marks) >= count + 2:
                enough.set()

        sampler.sample = timed_sample  # type: ignore[method-assign]
        sup._publish = marked_publish  # type: ignore[method-assign]
        await enough.wait()
    # The first interval starts with the supervisor; the first sample is its own.
    per_sample = [(b - a) * 1e6 for a, b in itertools.pairwise(marks[1:])]
    return per_sample, sampling[2:]


async def _timer_floor(count: int) -> list[float]:
    """Loop CPU (us) from one wake-up to the next of a loop that only sleeps IDLE_SECONDS."""
    marks = []
    for _ in range(count + 1):
        await anyio.sleep(IDLE_SECONDS)
        marks.append(time.thread_time())
    return [(b - a) * 1e6 for a, b in itertools.pairwise(marks)]


async def _on_a_timer(ctx: SuiteContext) -> None:
    """What sampling every 100 ms costs the loop, per sample, the wake-up included."""
    count = ctx.scale(20, 8)
    every: dict[str, list[float]] = {}
    floor = "idle loop, a 100 ms timer: loop CPU per wake-up"
    ahead = "supervisor every 100 ms, read ahead: loop CPU per sample"
    handed = "supervisor every 100 ms, reads handed over: loop CPU per sample"
    ahead_sample = "Sampler.sample() within a timer sample, read ahead"
    handed_sample = "Sampler.sample() within a timer sample, handed over"

    def supervised(name: str, sample_name: str, *, read_ahead: bool, part: bool = False) -> Case:
        async def measure() -> float:
            per_sample, sampling = await _timer_samples(count, read_ahead=read_ahead)
            every.setdefault(name if not part else sample_name, []).extend(
                per_sample if not part else sampling
            )
            return statistics.median(per_sample if not part else sampling)

        return Case(name if not part else sample_name, measure)

    async def idle() -> float:
        values = await _timer_floor(count)
        every.setdefault(floor, []).extend(values)
        return statistics.median(values)

    comparison = await ctx.compare(
        f"a supervisor sampling on its timer every {IDLE_SECONDS * 1000:.0f} ms: the loop's "
        f"CPU per sample, its wake-up included ({count} samples per round)",
        [
            Case(floor, idle),
            supervised(ahead, ahead_sample, read_ahead=True),
            supervised(handed, handed_sample, read_ahead=False),
            supervised(ahead, ahead_sample, read_ahead=True, part=True),
            supervised(handed, handed_sample, read_ahead=False, part=True),
        ],
        unit="us/sample (median)",
        baseline=floor,
        targets=[
            Target("a timer sample's reads <= 100 us on the loop", ahead_sample, max_value=100.0),
        ],
        rounds=ctx.scale(5, 3),
    )
    medians = {case.name: case.median for case in comparison.cases}
    ctx.table(
        "a timer sample every 100 ms, every sample",
        ["case", "samples", "median us", "p99 us", "median above the idle wake-up us"],
        [
            [
                name,
                str(len(v)),
                f"{statistics.median(v):.0f}",
                f"{percentile(v, 99):.0f}",
                f"{statistics.median(v) - medians[floor]:.0f}" if name in (ahead, handed) else "",
            ]
            for name, v in every.items()
        ],
    )
    sample_median = statistics.median(every[ahead_sample])
    own = medians[ahead] - medians[floor]
    ctx.note(
        f"On its timer, the sample's reads cost the loop {sample_median:.0f} us (median; "
        f"{statistics.median(every[handed_sample]):.0f} us handed over at the deadline): the "
        f"read thread reads at the deadline and wakes the loop once, with the figures. The "
        f"whole pass (sample, snapshot, grading, publishing) costs the loop {own:.0f} us "
        f"per sample above an idle loop's own wake-up ({medians[floor]:.0f} us): "
        f"{'within' if own <= 100 else 'above'} the 100 us goal."
    )
