"""
``make demo``: the RAG service under load, its live metrics, and one forced
threshold crossing.

1. Measures memory now and sets the warning threshold a little above it, so that
   the demo can cross it without exhausting the machine.
2. Starts ``examples/fastapi_rag_service.py`` with uvicorn on 127.0.0.1 (a free
   port, in this process).
3. Drives it with bounded load (``--concurrency`` clients, one request each at a
   time) for ``--duration`` seconds, while printing one line per snapshot read
   from ``/metrics/stream`` (Server-Sent Events).
4. A third of the way in, grows the service's cache ballast (``POST /demo/grow``)
   until the supervisor reports WARNING; its cleanup handler then frees it.
5. Stops the server (the supervisor stops its worker processes) and prints a
   summary: requests, errors, p50/p99 latency, cleanups run, bytes freed, and the
   highest level reached.

Run: ``python examples/demo.py [--duration 30] [--concurrency 16] [--interval 0.5]``.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx
import uvicorn
from _demo_load import LoadStats, client_loop, percentile, read_stream
from fastapi_rag_service import create_app

from resource_supervisor import (
    CleanupCompleted,
    LevelChanged,
    PressureLevel,
    Supervisor,
    SupervisorSettings,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

MIB = 2**20
STARTUP_ALLOWANCE = 96 * MIB  # what the service itself adds when it starts (workers, imports)


@dataclass(frozen=True)
class Plan:
    """Thresholds placed just above the memory in use when the demo starts."""

    used_bytes: int
    limit_bytes: int
    warning: float
    aggressive: float
    hysteresis: float
    chunk_bytes: int
    max_growth_bytes: int


def plan_thresholds(used_bytes: int, limit_bytes: int) -> Plan:
    """Place warning one step above current use (plus start-up), CRITICAL two steps further."""
    step = min(256 * MIB, max(64 * MIB, limit_bytes // 50))

    def pct(nbytes: float) -> float:
        return 100.0 * nbytes / limit_bytes

    warning = pct(used_bytes + STARTUP_ALLOWANCE + step)
    aggressive = warning + 2 * pct(step)
    if aggressive > 99.0:  # a nearly full machine: squeeze the bands under 99 %
        warning, aggressive = min(warning, 97.0), 99.0
    return Plan(
        used_bytes=used_bytes,
        limit_bytes=limit_bytes,
        warning=round(warning, 3),
        aggressive=round(aggressive, 3),
        hysteresis=round(min(pct(step) / 2, warning / 2), 3),
        chunk_bytes=step // 2,
        max_growth_bytes=STARTUP_ALLOWANCE + 4 * step,
    )


@dataclass
class Observed:
    """What the demo saw of the supervisor."""

    max_level: PressureLevel = PressureLevel.NORMAL
    cleanups: int = 0
    automatic_cleanups: int = 0
    bytes_freed: int = 0
    crossed_at: float | None = None
    snapshots: int = 0
    grown_bytes: int = 0
    lines: list[str] = field(default_factory=list)


def snapshot_line(data: dict[str, object], started: float) -> str:
    """A compact line for one snapshot (as JSON from the SSE stream)."""

    def num(key: str) -> float:
        value = data.get(key, 0)
        return float(value) if isinstance(value, int | float) else 0.0

    level = PressureLevel(int(num("pressure_level"))).name
    return (
        f"  {time.time() - started:5.1f}s {level:<8} "
        f"mem {num('memory_percent'):5.2f}% ({num('memory_used_bytes') / MIB:,.0f} MiB)  "
        f"rss {num('process_rss_bytes') / MIB:4.0f} MiB  "
        f"threads {num('thread_lane_busy'):.0f}/{num('thread_lane_capacity'):.0f}  "
        f"procs {num('process_workers_busy') + num('process_in_flight'):.0f}/"
        f"{num('process_workers_live') or num('dask_workers'):.0f} "
        f"q{num('process_queue_depth'):.0f}  "
        f"sessions {num('active_sessions_rag'):.0f}  "
        f"cache {num('rag_cache_items'):.0f} +{num('rag_cache_ballast_bytes') / MIB:.0f} MiB  "
        f"answers {num('rag_answers_total'):.0f}  cleanups {num('cleanup_runs_total'):.0f}"
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


async def measure() -> tuple[int, int]:
    """Memory in use and the effective limit, as the supervisor measures them."""
    async with Supervisor(SupervisorSettings(monitoring_enabled=False)) as probe:
        snap = probe.metrics
        return snap.memory_used_bytes, snap.memory_limit_bytes


async def watch_events(sup: Supervisor, seen: Observed, started: float) -> None:
    """Print level changes and cleanup reports until the supervisor exits."""
    async with sup.subscribe_events() as events:
        async for event in events:
            if isinstance(event, LevelChanged):
                seen.max_level = max(seen.max_level, event.level)
                if event.level >= PressureLevel.WARNING and seen.crossed_at is None:
                    seen.crossed_at = time.time() - started
                print(
                    f"  >> level {event.previous.name} -> {event.level.name} "
                    f"(memory {event.snapshot.memory_percent:.2f}%)",
                    flush=True,
                )
            elif isinstance(event, CleanupCompleted):
                report = event.report
                seen.cleanups += 1
                seen.automatic_cleanups += event.automatic
                seen.bytes_freed += report.bytes_freed
                kind = "aggressive" if report.request.aggressive else "normal"
                print(
                    f"  >> cleanup ({'automatic' if event.automatic else 'manual'}, {kind}): "
                    f"freed {report.bytes_freed / MIB:.1f} MiB in "
                    f"{report.duration_seconds * 1000:.0f} ms, "
                    f"{'all handlers ok' if report.ok else f'{len(report.failures)} failed'}",
                    flush=True,
                )


async def force_crossing(
    client: httpx.AsyncClient, sup: Supervisor, plan: Plan, seen: Observed, interval: float
) -> None:
    """Grow the cache ballast until the supervisor reports WARNING (bounded)."""
    print(
        f"  >> growing the cache ballast by {plan.chunk_bytes // MIB} MiB steps "
        f"until WARNING ({plan.warning:.2f}%)",
        flush=True,
    )
    while sup.level < PressureLevel.WARNING and seen.grown_bytes < plan.max_growth_bytes:
        response = await client.post("/demo/grow", json={"mib": plan.chunk_bytes // MIB})
        if response.status_code == 200:
            seen.grown_bytes += plan.chunk_bytes
        await anyio.sleep(interval / 2)
    if sup.level < PressureLevel.WARNING:
        print("  >> no crossing: memory fell elsewhere on the machine meanwhile", flush=True)


async def run(duration: float, concurrency: int, interval: float) -> int:
    """Run the demo; return the exit status."""
    used, limit = await measure()
    plan = plan_thresholds(used, limit)
    settings = SupervisorSettings(
        monitoring_interval=interval,
        warning_threshold_memory=plan.warning,
        aggressive_threshold_memory=plan.aggressive,
        hysteresis=plan.hysteresis,
        cleanup_cooldown=max(1.0, 4 * interval),
        warning_threshold_cpu=100.0,
    )
    print(
        f"memory now {used / MIB:,.0f} MiB of {limit / MIB:,.0f} MiB "
        f"({100 * used / limit:.2f}%); demo thresholds: warning {plan.warning:.2f}%, "
        f"critical {plan.aggressive:.2f}%, hysteresis {plan.hysteresis:.2f} points",
        flush=True,
    )
    app = create_app(settings)
    stats = LoadStats()
    seen = Observed()
    started = time.time()
    with bound_socket() as sock:
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=3
        )
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(60):
                while not server.started:  # noqa: ASYNC110  # uvicorn offers no event
                    await anyio.sleep(0.02)
            sup: Supervisor = app.state.supervisor
            tg.start_soon(watch_events, sup, seen, started)
            print(f"service on http://127.0.0.1:{port}; {concurrency} clients for {duration:g} s")
            limits = httpx.Limits(max_connections=concurrency + 4)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
            ) as client:

                def on_snapshot(data: dict[str, object]) -> None:
                    seen.snapshots += 1
                    seen.max_level = max(
                        seen.max_level, PressureLevel(int(str(data["pressure_level"])))
                    )
                    print(snapshot_line(data, started), flush=True)

                async with anyio.create_task_group() as side:
                    side.start_soon(read_stream, client, on_snapshot)
                    deadline = anyio.current_time() + duration

                    async def pressure() -> None:
                        await anyio.sleep(duration / 3)
                        await force_crossing(client, sup, plan, seen, interval)

                    side.start_soon(pressure)
                    async with anyio.create_task_group() as load:
                        for i in range(concurrency):
                            load.start_soon(client_loop, client, stats, deadline, i)
                    side.cancel_scope.cancel()
            server.should_exit = True
    elapsed = time.time() - started
    latencies = sorted(stats.latencies)
    print("summary")
    print(
        f"  requests        {stats.requests} (ok {stats.ok}, shed {stats.shed}, "
        f"errors {stats.errors}), {stats.requests / duration:.0f} req/s"
    )
    print(
        f"  latency         p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    print(
        f"  cleanups run    {seen.cleanups} ({seen.automatic_cleanups} automatic), "
        f"bytes freed {seen.bytes_freed:,} ({seen.bytes_freed / MIB:.1f} MiB)"
    )
    crossed = f"at {seen.crossed_at:.1f} s" if seen.crossed_at is not None else "not reached"
    print(f"  max level       {seen.max_level.name} (WARNING crossing {crossed})")
    print(
        f"  snapshots       {seen.snapshots} streamed; ballast grown {seen.grown_bytes // MIB} MiB"
    )
    print(f"  elapsed         {elapsed:.1f} s")
    return 0 if stats.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(description="resource-supervisor demo (make demo)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    args = parser.parse_args(argv)
    # The demo prints the supervisor's events itself; keep only errors from its logger.
    logging.basicConfig(level=logging.ERROR, format="  [%(name)s] %(message)s")
    try:
        return anyio.run(run, args.duration, args.concurrency, args.interval)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
