"""
Load test: the FastAPI service under bounded concurrent load over loopback
(127.0.0.1 only), without the supervisor, with it (and its load shedding) at
NORMAL pressure, and with pressure pinned at CRITICAL so that it sheds.

Each variant runs in its own uvicorn process, started once; the load phases are
interleaved over the rounds. Figures: requests/s, p50/p99 latency, errors (other
than 503), shed (503) and the server's peak RSS.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ._harness import Case, SuiteContext, percentile
from ._rss import PeakRss

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

VARIANTS = {
    "no supervisor": "plain_app",
    "supervisor + shedding (NORMAL)": "supervised_app",
    "supervisor + shedding (CRITICAL)": "critical_app",
}
CONCURRENCY = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _server(factory: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        f"benchmarks._loadtest_app:{factory}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(command, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_ready(client: httpx.AsyncClient, url: str) -> None:
    import httpx

    with anyio.fail_after(30):
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.1)


async def _load(
    client: httpx.AsyncClient, url: str, seconds: float
) -> tuple[list[float], int, int]:
    """Hammer *url* from CONCURRENCY tasks; return (latencies ms of 200s, errors, shed)."""
    import httpx

    latencies: list[float] = []
    errors = shed = 0
    end = time.perf_counter() + seconds

    async def user() -> None:
        nonlocal errors, shed
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                response = await client.get(url)
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code == 200:
                latencies.append((time.perf_counter() - start) * 1e3)
            elif response.status_code == 503:
                shed += 1
            else:
                errors += 1

    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(user)
    return latencies, errors, shed


async def run(ctx: SuiteContext) -> None:
    """
    Drive each variant with the same load, interleaved.

    Cancellation:
        Propagates; every server process is terminated on the way out.
    """
    import httpx

    import resource_supervisor.integrations.fastapi  # noqa: F401 - skip early when missing

    seconds = ctx.scale(8.0, 2.0)
    rows: dict[str, list[tuple[float, float, float, int, int, int]]] = {}
    with contextlib.ExitStack() as stack:
        ports = {name: _free_port() for name in VARIANTS}
        servers = {
            name: stack.enter_context(_server(factory, ports[name]))
            for name, factory in VARIANTS.items()
        }
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
            for port in ports.values():
                await _wait_ready(client, f"http://127.0.0.1:{port}/health")
                await _load(client, f"http://127.0.0.1:{port}/work", 0.3)  # warm up

            def case(name: str) -> Case:
                async def measure() -> float:
                    url = f"http://127.0.0.1:{ports[name]}/work"
                    with PeakRss(servers[name].pid, interval=0.05) as peak:
                        latencies, errors, shed = await _load(client, url, seconds)
                    ok = len(latencies)
                    p50 = percentile(latencies, 50) if latencies else float("nan")
                    p99 = percentile(latencies, 99) if latencies else float("nan")
                    rows.setdefault(name, []).append(
                        ((ok + shed) / seconds, p50, p99, errors, shed, peak.bytes)
                    )
                    return seconds * 1e6 / max(1, ok + shed)

                return Case(name, measure)

            await ctx.compare(
                f"{CONCURRENCY} concurrent clients, {seconds:g} s per phase",
                [case(name) for name in VARIANTS],
                unit="us per answered request",
                baseline="no supervisor",
                rounds=ctx.scale(3, 2),
                note="Answered = 200 or 503. Lower is better; shed 503s are cheap by design.",
            )
    table = []
    for name, runs in rows.items():
        med = [statistics.median(r[i] for r in runs) for i in range(6)]
        table.append(
            [
                name,
                f"{med[0]:.0f}",
                f"{med[1]:.1f}",
                f"{med[2]:.1f}",
                f"{med[3]:.0f}",
                f"{med[4]:.0f}",
                f"{med[5] / 2**20:.0f}",
            ]
        )
    ctx.table(
        "per variant (median over rounds)",
        [
            "variant",
            "answered req/s",
            "p50 ms (200s)",
            "p99 ms (200s)",
            "errors",
            "shed 503",
            "server peak RSS MiB",
        ],
        table,
    )
    ctx.note(
        "Client and servers share this machine's CPUs; each request spins 1 ms and "
        "touches 256 KiB in a worker thread."
    )
