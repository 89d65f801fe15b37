"""
``/metrics/stream`` at scale: what one snapshot costs the event loop with 256 open
streams (each snapshot encoded once for all streams, against once per stream), and a
real uvicorn under 2,000 clients with the stream cap and without it (server RSS growth,
``/health/resources`` latency, refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ._harness import Case, SuiteContext

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import Message

STREAMS = 256
TIME_LIMITS = {"full": 600.0, "quick": 300.0}


async def _fan_out_round(*, shared: bool, streams: int, snapshots: int) -> float:
    """Median loop time (us) from a new snapshot until every stream has sent it."""
    from resource_supervisor._config import build_settings
    from resource_supervisor._supervisor import Supervisor
    from resource_supervisor.integrations import _sse

    class _PerStream(_sse.StreamHub):
        """The behaviour before shared encoding: every stream encodes for itself."""

        __slots__ = ()

        def _encoded_data(self, snapshot: object) -> bytes | None:
            return None

    hub = (_sse.StreamHub if shared else _PerStream)(max_streams=streams)
    sent = 0
    done = anyio.Event()

    async def send(message: Message) -> None:
        nonlocal sent
        if message["type"] == "http.response.body" and message.get("body"):
            sent += 1
            if sent == streams:
                done.set()

    never = anyio.Event()

    async def receive() -> Message:
        await never.wait()
        return {"type": "http.disconnect"}  # pragma: no cover - never reached

    times: list[float] = []
    async with (
        Supervisor(build_settings(monitoring_enabled=False)) as sup,
        anyio.create_task_group() as tg,
    ):
        for _ in range(streams):
            stream = _sse.SnapshotStream(hub, sup, limit=None)
            tg.start_soon(stream, {"type": "http"}, receive, send)
        await done.wait()  # the first snapshot, sent on connecting
        for _ in range(snapshots):
            await anyio.wait_all_tasks_blocked()
            sent = 0
            done = anyio.Event()
            await sup.update_metrics()  # published before it returns; streams wake next
            start = time.perf_counter()
            await done.wait()
            times.append((time.perf_counter() - start) * 1e6)
        tg.cancel_scope.cancel()
    times.sort()
    return times[len(times) // 2]


# -- real uvicorn ------------------------------------------------------------------


@contextlib.contextmanager
def _server(max_streams: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port: int = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "benchmarks._streams_app:create",
        "--fd",
        str(sock.fileno()),
        "--backlog",
        "4096",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(root), "RS_BENCH_MAX_STREAMS": str(max_streams)}
    with sock:
        process = subprocess.Popen(command, cwd=root, env=env, pass_fds=(sock.fileno(),))
    try:
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get(port: int, target: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def _flood(max_streams: int, clients: int) -> list[str]:
    """One server, *clients* stream requests: RSS growth, health latency, refusals."""
    import psutil

    with _server(max_streams) as (process, port):
        with anyio.fail_after(60):
            while True:
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(_get, port, "/health/resources")
                    break
                await anyio.sleep(0.1)
        server = psutil.Process(process.pid)
        rss_before = server.memory_info().rss
        writers: list[asyncio.StreamWriter] = []
        statuses: list[int] = []
        gate = asyncio.Semaphore(256)

        async def client() -> None:
            async with gate:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writers.append(writer)
                writer.write(b"GET /metrics/stream HTTP/1.1\r\nHost: b\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head.split(b" ", 2)[1]))

        started = time.perf_counter()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(client)
            connect_s = time.perf_counter() - started
            await anyio.sleep(1.0)  # the streams run: a few samples go out
            start = time.perf_counter()
            await anyio.to_thread.run_sync(_get, port, "/health/resources")
            health_ms = (time.perf_counter() - start) * 1e3
            growth = (server.memory_info().rss - rss_before) / 2**20
        finally:
            for writer in writers:
                writer.close()
    return [
        "unbounded" if max_streams >= clients else str(max_streams),
        str(statuses.count(200)),
        str(statuses.count(503)),
        f"{growth:.1f}",
        f"{health_ms:.0f}",
        f"{connect_s:.1f}",
    ]


async def run(ctx: SuiteContext) -> None:
    """
    Measure the per-snapshot fan-out cost and a real server under many clients.

    Cancellation:
        Propagates; streams, supervisors and the uvicorn processes are stopped.
    """
    snapshots = ctx.scale(20, 8)

    def case(name: str, *, shared: bool) -> Case:
        async def measure() -> float:
            return await _fan_out_round(shared=shared, streams=STREAMS, snapshots=snapshots)

        return Case(name, measure)

    await ctx.compare(
        f"one snapshot to {STREAMS} open streams (loop time until the last has sent it)",
        [
            case("encoded once for all streams", shared=True),
            case("encoded once per stream", shared=False),
        ],
        unit="us",
        baseline="encoded once per stream",
        note="Median over the round's snapshots; SnapshotStream over bare ASGI, no sockets.",
    )

    clients = ctx.scale(2000, 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * clients + 200
    if hard != resource.RLIM_INFINITY and hard < needed:
        ctx.note(f"uvicorn flood skipped: needs {needed} open files, the hard limit is {hard}")
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        rows = [await _flood(100, clients), await _flood(10 * clients, clients)]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ctx.table(
        f"{clients} clients on /metrics/stream of a real uvicorn (sampling every 0.5 s)",
        [
            "max_streams",
            "served",
            "refused (503)",
            "server RSS growth MiB",
            "health ms",
            "connect s",
        ],
        rows,
    )
