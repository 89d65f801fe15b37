"""
``make demo``: the RAG service under load, its live metrics, one WARNING crossing,
one CRITICAL episode with load shedding and its recovery, and a plot of the run.

1. Starts ``examples/fastapi_rag_service.py`` with uvicorn on 127.0.0.1 (a free
   port, in this process) and drives it with bounded load (``--concurrency``
   clients, one request each at a time), printing one line per snapshot read from
   ``/metrics/stream`` (Server-Sent Events).
2. Memory is measured as a container would see it, without needing one: the
   service's own memory (the RSS of this process and its worker processes) against
   a budget of what it uses after warm-up plus ``--headroom-mib``, so other
   programs on the machine cannot move the demo's levels. The thresholds are the
   defaults: WARNING at 75 %, CRITICAL at 85 %.
3. Grows the service's cache ballast (``POST /demo/grow``) until WARNING; the
   cleanup handler frees it and the level falls back.
4. A CRITICAL episode: a burst of memory held by the process itself (a batch job
   the cache cannot free) pushes past 85 %. The aggressive cleanup runs, the load
   shedding middleware answers ``503`` with ``Retry-After``, and once the burst ends
   the level returns to NORMAL and requests succeed again.
5. Stops the server (the supervisor stops its worker processes), prints a summary
   (requests, 503s, p50/p99 latency, cleanups, bytes freed, the highest level) and
   writes a PNG plot of the run (``--plot``): memory against the limit, the level,
   requests per second (answered and shed) and the cleanups.

Run: ``python examples/demo.py [--duration 20] [--concurrency 16] [--interval 0.5]``;
``--workers 2`` serves the same app as a multi-worker server instead (see
``examples/_demo_workers.py``).
"""

from __future__ import annotations

import argparse
import logging
import math
import mmap
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx
import psutil
import uvicorn
from _demo_load import LoadStats, client_loop, percentile, read_stream
from fastapi_rag_service import create_app

from resource_supervisor import (
    CleanupCompleted,
    ConcurrencySettings,
    LevelChanged,
    PressureLevel,
    Supervisor,
    SupervisorSettings,
    WrappingSource,
)
from resource_supervisor.testing import ScriptedSource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from resource_supervisor import MetricValue

MIB = 2**20
PAGE = mmap.PAGESIZE
WARNING_PERCENT = 75.0  # the defaults of warning_threshold_memory / aggressive_threshold_memory
CRITICAL_PERCENT = 85.0
STEP_TIMEOUT = 15.0  # seconds any phase may wait for the level it expects (a loaded machine)


class BudgetSource(WrappingSource):
    """
    The built-in sampler, with memory measured as this process tree's RSS against a
    fixed budget, as a container limit would be (``memory_limit_source: demo_budget``).

    Args:
        headroom_bytes: The budget is the memory in use when :meth:`fix_budget` is
            called plus this.
    """

    def __init__(self, headroom_bytes: int) -> None:
        super().__init__(ScriptedSource())  # the built-in sampler, nothing overridden
        self._me = psutil.Process()
        self._headroom = headroom_bytes
        self.budget_bytes: int | None = None

    def used_bytes(self) -> int:
        """RSS of this process and its descendants (the worker processes)."""
        total = self._me.memory_info().rss
        for child in self._me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def fix_budget(self) -> int:
        """Fix the budget at what is in use now plus the headroom; return it."""
        self.budget_bytes = self.used_bytes() + self._headroom
        return self.budget_bytes

    def _limit(self, used: int) -> int:
        return self.budget_bytes if self.budget_bytes is not None else used + self._headroom

    async def sample(self) -> dict[str, MetricValue]:
        """
        Sample the machine, then measure memory against the budget.

        Cancellation:
            As the built-in sampler's.
        """
        data = await self._base.sample()
        used = await anyio.to_thread.run_sync(self.used_bytes)
        limit = self._limit(used)
        data.update(
            memory_used_bytes=used,
            memory_limit_bytes=limit,
            memory_percent=100.0 * used / limit,
            memory_limit_source="demo_budget",
        )
        return data

    def read_memory(self) -> tuple[int, int]:
        """Used and limit bytes, as :meth:`sample` computes them."""
        used = self.used_bytes()
        return used, self._limit(used)


@dataclass
class Observed:
    """What the demo saw of the supervisor."""

    max_level: PressureLevel = PressureLevel.NORMAL
    cleanups: int = 0
    automatic_cleanups: int = 0
    bytes_freed: int = 0
    warning_at: float | None = None
    critical_at: float | None = None
    recovered_at: float | None = None
    snapshots: int = 0
    grown_bytes: int = 0
    burst_bytes: int = 0
    # (seconds since start, used bytes, limit bytes, level, cleanup runs)
    timeline: list[tuple[float, float, float, int, int]] = field(default_factory=list)
    cleanup_times: list[tuple[float, bool]] = field(default_factory=list)  # (t, aggressive)


def snapshot_line(data: dict[str, object], started: float) -> str:
    """A compact line for one snapshot (as JSON from the SSE stream)."""

    def num(key: str) -> float:
        value = data.get(key, 0)
        return float(value) if isinstance(value, int | float) else 0.0

    level = PressureLevel(int(num("pressure_level"))).name
    return (
        f"  {time.time() - started:5.1f}s {level:<8} "
        f"mem {num('memory_percent'):5.1f}% ({num('memory_used_bytes') / MIB:,.0f} of "
        f"{num('memory_limit_bytes') / MIB:,.0f} MiB)  "
        f"threads {num('thread_lane_busy'):.0f}/{num('thread_lane_capacity'):.0f}  "
        f"procs {num('process_workers_busy') + num('process_in_flight'):.0f}/"
        f"{num('process_workers_live') or num('dask_workers'):.0f} "
        f"q{num('process_queue_depth'):.0f}  "
        f"sessions {num('active_sessions_rag'):.0f}  "
        f"cache {num('rag_cache_items'):.0f} +{num('rag_cache_ballast_bytes') / MIB:.0f} MiB  "
        f"cleanups {num('cleanup_runs_total'):.0f}"
    )


@contextmanager
def bound_socket() -> Iterator[socket.socket]:
    """A listening-ready socket on a free port of 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    with sock:
        yield sock


class _Server(uvicorn.Server):
    """uvicorn without signal handlers: Ctrl-C cancels the demo as a whole."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def watch_events(sup: Supervisor, seen: Observed, started: float) -> None:
    """Print level changes and cleanup reports until the supervisor exits."""
    async with sup.subscribe_events() as events:
        async for event in events:
            now = time.time() - started
            if isinstance(event, LevelChanged):
                seen.max_level = max(seen.max_level, event.level)
                if event.level >= PressureLevel.WARNING and seen.warning_at is None:
                    seen.warning_at = now
                if event.level is PressureLevel.CRITICAL and seen.critical_at is None:
                    seen.critical_at = now
                if (
                    event.level is PressureLevel.NORMAL
                    and seen.critical_at is not None
                    and seen.recovered_at is None
                ):
                    seen.recovered_at = now
                print(
                    f"  >> level {event.previous.name} -> {event.level.name} "
                    f"(memory {event.snapshot.memory_percent:.1f}% of the budget)",
                    flush=True,
                )
            elif isinstance(event, CleanupCompleted):
                report = event.report
                seen.cleanups += 1
                seen.automatic_cleanups += event.automatic
                seen.bytes_freed += report.bytes_freed
                seen.cleanup_times.append((now, report.request.aggressive))
                kind = "aggressive" if report.request.aggressive else "normal"
                print(
                    f"  >> cleanup ({'automatic' if event.automatic else 'manual'}, {kind}): "
                    f"freed {report.bytes_freed / MIB:.1f} MiB in "
                    f"{report.duration_seconds * 1000:.0f} ms, "
                    f"{'all handlers ok' if report.ok else f'{len(report.failures)} failed'}",
                    flush=True,
                )


async def wait_for(check: Callable[[], bool], interval: float, limit: float = STEP_TIMEOUT) -> bool:
    """Poll *check* every *interval* / 2 seconds for at most *limit* seconds."""
    with anyio.move_on_after(limit):
        while not check():  # noqa: ASYNC110  # levels change on the sampler's schedule
            await anyio.sleep(interval / 2)
        return True
    return False


def allocate(nbytes: int) -> mmap.mmap:
    """Allocate and touch *nbytes* (blocking: run it in a thread)."""
    block = mmap.mmap(-1, nbytes)
    for offset in range(0, nbytes, PAGE):
        block[offset] = 1  # touch every page so it is really resident
    return block


async def scenario(
    client: httpx.AsyncClient,
    sup: Supervisor,
    source: BudgetSource,
    seen: Observed,
    stats: LoadStats,
    interval: float,
    pace: float,
) -> None:
    """Warm up, cross WARNING with the cache ballast, then one CRITICAL episode."""
    await anyio.sleep(pace)  # warm-up: worker processes start, caches fill
    budget = source.fix_budget()
    print(
        f"  >> budget fixed at {budget / MIB:,.0f} MiB (in use now + headroom): WARNING at "
        f"{WARNING_PERCENT:g}%, CRITICAL at {CRITICAL_PERCENT:g}%",
        flush=True,
    )
    await anyio.sleep(pace)

    chunk = max(MIB, (budget // 12) // MIB * MIB)
    print(f"  >> growing the cache ballast by {chunk // MIB} MiB steps until WARNING", flush=True)
    deadline = anyio.current_time() + STEP_TIMEOUT
    # seen.warning_at: the WARNING may already be over (its cleanup is quick)
    while (
        sup.level < PressureLevel.WARNING
        and seen.warning_at is None
        and anyio.current_time() < deadline
    ):
        response = await client.post("/demo/grow", json={"mib": chunk // MIB})
        if response.status_code == 200:
            seen.grown_bytes += chunk
        # Grade every step: a step is smaller than the WARNING..CRITICAL band, so
        # the level cannot jump over WARNING between two samples on a slow machine.
        await sup.update_metrics()
        await anyio.sleep(interval / 2)
    if not await wait_for(lambda: sup.level is PressureLevel.NORMAL, interval):
        print("  >> the cleanup did not bring the level back (machine too loaded?)", flush=True)
    await anyio.sleep(pace)

    used, limit = source.read_memory()
    burst = max(MIB, int(limit * 0.95) - used)
    print(
        f"  >> a batch job takes {burst / MIB:,.0f} MiB the cache cannot free: past CRITICAL",
        flush=True,
    )
    block = await anyio.to_thread.run_sync(allocate, burst)
    seen.burst_bytes = burst
    try:
        await wait_for(lambda: sup.level is PressureLevel.CRITICAL, interval)
        shed_before = stats.shed
        # Hold the burst until clients have met the shedding for a while (bounded).
        await wait_for(lambda: stats.shed - shed_before >= 20, interval, limit=pace * 2)
        await anyio.sleep(pace / 2)
    finally:
        block.close()
    print("  >> the batch job ends and frees its memory", flush=True)
    await wait_for(lambda: sup.level is PressureLevel.NORMAL, interval)
    await anyio.sleep(pace)  # show requests succeeding again


def plot(path: Path, seen: Observed, stats: LoadStats, started: float) -> None:
    """Write the run as a PNG: memory vs limit, level, requests per second, cleanups."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    t = [row[0] for row in seen.timeline]
    fig, (mem, lvl, rps) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 7.5), height_ratios=(3, 1, 2), layout="constrained"
    )
    fig.suptitle(
        f"resource-supervisor demo: max level {seen.max_level.name}, "
        f"{stats.ok} answered, {stats.shed} shed (503), {seen.cleanups} cleanups"
    )
    used = [row[1] / MIB for row in seen.timeline]
    limit = [row[2] / MIB for row in seen.timeline]
    mem.plot(t, used, label="memory used (service + workers)", color="tab:blue")
    mem.plot(t, limit, label="limit (budget)", color="black", linewidth=1)
    mem.plot(
        t,
        [x * WARNING_PERCENT / 100 for x in limit],
        "--",
        color="tab:orange",
        linewidth=1,
        label=f"WARNING {WARNING_PERCENT:g}%",
    )
    mem.plot(
        t,
        [x * CRITICAL_PERCENT / 100 for x in limit],
        "--",
        color="tab:red",
        linewidth=1,
        label=f"CRITICAL {CRITICAL_PERCENT:g}%",
    )
    for when, aggressive in seen.cleanup_times:
        mem.axvline(when, color="tab:red" if aggressive else "tab:green", alpha=0.5, linewidth=1)
    mem.plot([], [], color="tab:green", alpha=0.5, label="cleanup (normal)")
    mem.plot([], [], color="tab:red", alpha=0.5, label="cleanup (aggressive)")
    mem.set_ylim(0, max(limit, default=1.0) * 1.3)  # room for the legend
    mem.set_ylabel("MiB")
    mem.legend(loc="upper left", fontsize="small", ncols=2)
    lvl.step(t, [row[3] for row in seen.timeline], where="post", color="tab:purple")
    lvl.set_yticks([0, 1, 2], ["NORMAL", "WARNING", "CRITICAL"])
    lvl.set_ylim(-0.3, 2.3)
    lvl.set_ylabel("level")
    end = max([*t, *(when - started for when, _ in stats.answered)], default=1.0)
    bins = max(1, math.ceil(end))
    ok = [0] * bins
    shed = [0] * bins
    for when, status in stats.answered:
        index = min(bins - 1, max(0, int(when - started)))
        if status == 503:
            shed[index] += 1
        elif 200 <= status < 300:
            ok[index] += 1
    seconds = [i + 0.5 for i in range(bins)]
    rps.bar(seconds, ok, width=0.9, color="tab:blue", label="answered (2xx)")
    rps.bar(seconds, shed, width=0.9, bottom=ok, color="tab:red", label="shed (503)")
    rps.set_ylim(0, max([a + b for a, b in zip(ok, shed, strict=True)], default=1) * 1.3 + 1)
    rps.set_ylabel("requests / s")
    rps.set_xlabel("seconds since start")
    rps.legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(
    duration: float, concurrency: int, interval: float, headroom: int, plot_path: Path | None
) -> int:
    """Run the demo; return the exit status."""
    settings = SupervisorSettings(
        monitoring_interval=interval,
        warning_threshold_memory=WARNING_PERCENT,
        aggressive_threshold_memory=CRITICAL_PERCENT,
        cleanup_cooldown=max(1.0, 2 * interval),
        warning_threshold_cpu=100.0,
        concurrency=ConcurrencySettings(default_cpu_workers=2),
    )
    source = BudgetSource(headroom)
    app = create_app(settings, supervisor_factory=lambda s: Supervisor(s, source=source))
    stats = LoadStats()
    seen = Observed()
    started = time.time()  # reset once the service is up
    pace = max(1.0, duration / 8)  # the scenario's phases scale with --duration
    with bound_socket() as sock:
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=3,
            # Longer than any pause of a client on a loaded machine: a keep-alive
            # connection closed by the server just as a client reuses it would fail
            # that request (RemoteProtocolError), which is not what the demo shows.
            timeout_keep_alive=120,
        )
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(60):
                while not server.started:  # noqa: ASYNC110  # uvicorn offers no event
                    await anyio.sleep(0.02)
            started = time.time()
            sup: Supervisor = app.state.supervisor
            tg.start_soon(watch_events, sup, seen, started)
            print(f"service on http://127.0.0.1:{port}; {concurrency} clients for {duration:g} s")
            limits = httpx.Limits(max_connections=concurrency + 4)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
            ) as client:

                def on_snapshot(data: dict[str, object]) -> None:
                    seen.snapshots += 1
                    level = int(str(data["pressure_level"]))
                    seen.max_level = max(seen.max_level, PressureLevel(level))
                    seen.timeline.append(
                        (
                            float(str(data["last_metrics_update_ts"])) - started,
                            float(str(data["memory_used_bytes"])),
                            float(str(data["memory_limit_bytes"])),
                            level,
                            int(str(data.get("cleanup_runs_total", 0))),
                        )
                    )
                    print(snapshot_line(data, started), flush=True)

                async with anyio.create_task_group() as side:
                    side.start_soon(read_stream, client, on_snapshot)
                    # Generous upper bound: the load stops when the scenario is over.
                    deadline = anyio.current_time() + duration + 6 * STEP_TIMEOUT
                    async with anyio.create_task_group() as load:
                        for i in range(concurrency):
                            load.start_soon(client_loop, client, stats, deadline, i)
                        await scenario(client, sup, source, seen, stats, interval, pace)
                        rest = duration - (time.time() - started)
                        if rest > 0:
                            await anyio.sleep(rest)
                        load.cancel_scope.cancel()
                    side.cancel_scope.cancel()
            server.should_exit = True
    elapsed = time.time() - started
    latencies = sorted(stats.latencies)
    print("summary")
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(stats.error_kinds.items()))
    print(
        f"  requests        {stats.requests} (ok {stats.ok}, shed {stats.shed}, "
        f"errors {stats.errors}{f' [{kinds}]' if kinds else ''}), "
        f"{stats.requests / elapsed:.0f} req/s"
    )
    print(
        f"  latency         p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    print(
        f"  cleanups run    {seen.cleanups} ({seen.automatic_cleanups} automatic), "
        f"bytes freed {seen.bytes_freed:,} ({seen.bytes_freed / MIB:.1f} MiB)"
    )

    def at(value: float | None) -> str:
        return f"at {value:.1f} s" if value is not None else "not reached"

    print(
        f"  max level       {seen.max_level.name} (WARNING {at(seen.warning_at)}, "
        f"CRITICAL {at(seen.critical_at)}, back to NORMAL {at(seen.recovered_at)})"
    )
    print(
        f"  snapshots       {seen.snapshots} streamed; ballast grown "
        f"{seen.grown_bytes // MIB} MiB, burst {seen.burst_bytes // MIB} MiB"
    )
    print(f"  elapsed         {elapsed:.1f} s")
    if plot_path is not None:
        try:
            plot(plot_path, seen, stats, started)
        except ImportError:
            print("  plot            skipped: needs matplotlib (pip install matplotlib)")
        else:
            print(f"  plot            {plot_path}")
    return 0 if stats.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(description="resource-supervisor demo (make demo)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (at least)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument(
        "--headroom-mib", type=int, default=320, help="budget = memory after warm-up + this"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("demo-run.png"),
        help="PNG of the run (default: %(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (>1: uvicorn --workers)"
    )
    args = parser.parse_args(argv)
    if args.workers > 1:
        from _demo_workers import run_workers

        return run_workers(args.workers, args.duration, args.concurrency)
    # The demo prints the supervisor's events itself; keep only errors from its logger.
    logging.basicConfig(level=logging.ERROR, format="  [%(name)s] %(message)s")
    try:
        return anyio.run(
            run,
            args.duration,
            args.concurrency,
            args.interval,
            args.headroom_mib * MIB,
            None if args.no_plot else args.plot,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
