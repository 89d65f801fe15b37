"""
Tests of ``/metrics/stream``: each snapshot encoded once for all clients, the cap on
concurrent streams (refusals answered and counted), thousands of real connections to
uvicorn, and streams that end cleanly when uvicorn shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resource_supervisor.integrations import _sse
from resource_supervisor.integrations._sse import StreamHub
from resource_supervisor.integrations.fastapi import create_router
from tests._http import raw_request, shedding_app, uvicorn_subprocess
from tests._loop_guard import blocking_setup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from fastapi import FastAPI
    from starlette.types import Message

    from resource_supervisor._snapshot import MetricValue


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client over the ASGI transport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


class HeldStream:
    """One ``/metrics/stream`` request over bare ASGI, held open until closed."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.ended = False
        self._disconnect = anyio.Event()
        self._requested = False

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/metrics/stream",
            "raw_path": b"/metrics/stream",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
            "app": self.app,
        }

        async def receive() -> Message:
            if not self._requested:
                self._requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.headers = dict(message["headers"])
            elif message["type"] == "http.response.body":
                self.chunks.append(message.get("body", b""))
                self.ended = not message.get("more_body", False)

        await self.app(scope, receive, send)

    def close(self) -> None:
        self._disconnect.set()


def test_hub_rejects_bad_settings() -> None:
    """Every bad setting of the stream cap is refused with the setting named."""
    for kwargs, name in (
        ({"max_streams": 0}, "max_streams"),
        ({"refused_status": 500}, "refused_status"),
        ({"retry_after": 0}, "retry_after"),
        ({"buffer": 0}, "stream_buffer"),
        ({"heartbeat": 0}, "heartbeat"),
    ):
        with pytest.raises(ValueError, match=name):
            StreamHub(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_streams"):
        create_router(max_streams=0)


async def test_each_snapshot_is_encoded_once_for_all_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 clients receiving 3 snapshots cost 3 JSON encodings, not 150; every
    client still gets its own event ids 1, 2, 3."""
    encoded: list[int] = []
    real = _sse._encode

    def counting(snapshot: Mapping[str, MetricValue]) -> bytes:
        encoded.append(1)
        return real(snapshot)

    monkeypatch.setattr(_sse, "_encode", counting)
    app = shedding_app()
    bodies: list[str] = []
    async with running(app) as client:
        sup = app.state.supervisor

        async def one() -> None:
            response = await client.get("/metrics/stream", params={"limit": 3})
            bodies.append(response.text)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
            for _ in range(2):
                await anyio.wait_all_tasks_blocked()
                await sup.update_metrics()
    assert len(bodies) == 50
    assert len(encoded) == 3
    first = bodies[0].split("\n\n")
    assert all(body == bodies[0] for body in bodies)  # same events, same ids
    assert [block.splitlines()[0] for block in first if block] == ["id: 1", "id: 2", "id: 3"]


@pytest.mark.parametrize("status", [503, 429])
async def test_streams_over_the_cap_are_refused_and_counted(status: int) -> None:
    """With max_streams=3 a fourth stream gets the configured status with
    Retry-After at once and is counted in stream_refused_total and in Prometheus;
    once a stream ends its slot serves the next client."""
    app = shedding_app(max_streams=3, stream_refused_status=status, stream_retry_after=2.5)
    async with running(app) as client:
        sup = app.state.supervisor
        held = [HeldStream(app) for _ in range(3)]
        async with anyio.create_task_group() as tg:
            for stream in held:
                tg.start_soon(stream.run)
            await anyio.wait_all_tasks_blocked()
            assert [s.status for s in held] == [200, 200, 200]
            with anyio.fail_after(5):
                refused = [await client.get("/metrics/stream") for _ in range(4)]
            assert {r.status_code for r in refused} == {status}
            assert {r.headers["retry-after"] for r in refused} == {"3"}
            assert "at most 3" in refused[0].json()["detail"]
            # Other routes are unaffected.
            assert (await client.get("/health/resources")).status_code == 200

            snap = await sup.update_metrics()
            assert snap["stream_refused_total"] == 4
            assert snap["stream_subscribers"] == 3
            families = {
                f.name: f
                for f in text_string_to_metric_families((await client.get("/metrics")).text)
            }
            family = families["resource_supervisor_stream_refused"]
            assert family.type == "counter"
            assert [s.value for s in family.samples if s.name.endswith("_total")] == [4.0]

            held[0].close()
            await anyio.wait_all_tasks_blocked()
            assert held[0].ended
            again = await client.get("/metrics/stream", params={"limit": 1})
            assert again.status_code == 200
            for stream in held[1:]:
                stream.close()
        assert all(s.ended for s in held)
        assert (await sup.update_metrics())["stream_subscribers"] == 0


async def test_a_cancelled_stream_gives_its_slot_back() -> None:
    """A stream whose handler is cancelled by an anyio scope ends, propagates the
    cancellation, and frees its slot."""
    app = shedding_app(max_streams=1)
    async with running(app) as client:
        stream = HeldStream(app)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.run)
                await anyio.wait_all_tasks_blocked()
                assert stream.status == 200
                scope.cancel()
        assert scope.cancelled_caught
        assert stream.ended
        assert (await client.get("/metrics/stream", params={"limit": 1})).status_code == 200


async def test_a_stream_cancelled_by_the_server_ends_cleanly() -> None:
    """The request task cancelled from outside (as uvicorn does after its graceful
    timeout) ends the body, returns normally and frees the slot."""
    app = shedding_app(max_streams=1)
    async with running(app) as client:
        stream = HeldStream(app)
        task = asyncio.ensure_future(stream.run())
        await anyio.wait_all_tasks_blocked()
        assert stream.status == 200
        task.cancel("as a server does at shutdown")
        with anyio.fail_after(5):
            await task  # no CancelledError: the response ended on its own terms
        assert not task.cancelled()
        assert stream.ended
        assert stream.chunks[-1] == b""
        assert (await client.get("/metrics/stream", params={"limit": 1})).status_code == 200


async def test_a_quiet_stream_sends_keep_alive_comments() -> None:
    """Without new snapshots a stream sends a comment line every heartbeat."""
    app = shedding_app(heartbeat=0.05)
    async with running(app):
        stream = HeldStream(app)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run)
            with anyio.fail_after(10):
                while b": keep-alive\n\n" not in stream.chunks:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            stream.close()
    assert stream.ended


async def test_streams_end_when_the_supervisor_exits() -> None:
    """Open streams end (their body is closed) when the app's lifespan stops the
    supervisor."""
    app = shedding_app()
    streams = [HeldStream(app) for _ in range(3)]
    async with anyio.create_task_group() as tg:
        async with app.router.lifespan_context(app):
            for stream in streams:
                tg.start_soon(stream.run)
            await anyio.wait_all_tasks_blocked()
            assert all(s.status == 200 and not s.ended for s in streams)
        with anyio.fail_after(10):
            while not all(s.ended for s in streams):  # noqa: ASYNC110
                await anyio.sleep(0.01)


# -- real uvicorn ------------------------------------------------------------------


def _raise_fd_limit(needed: int) -> Callable[[], None]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; skip if that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _open_stream(port: int) -> tuple[int, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics/stream HTTP/1.1\r\nHost: test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower(), reader, writer


def _get(port: int, target: str) -> tuple[int, bytes]:
    return raw_request(port, "GET", target, timeout=5)


CLIENTS = 2000
CAP = 100


@blocking_setup("reads the server process's RSS through psutil")
@pytest.mark.timeout(120)
async def test_thousands_of_real_connections_stay_bounded_and_end_cleanly() -> None:
    """2,000 clients on /metrics/stream of a real uvicorn with max_streams=100: 100
    are served, the rest refused at once with 503 + Retry-After and counted in
    Prometheus; health answers meanwhile; the server's RSS grows by a bounded
    amount (without the cap: +61 MiB, and health took 6 s). Then uvicorn
    --timeout-graceful-shutdown 1 cancels the 100 open streams: each client sees
    its chunked body end, and the server logs no traceback."""
    restore = _raise_fd_limit(2 * CLIENTS + 200)
    try:
        with uvicorn_subprocess(
            "streaming_app",
            "--timeout-graceful-shutdown",
            "1",
            env={"RS_TEST_MAX_STREAMS": str(CAP), "RS_TEST_INTERVAL": "0.5"},
        ) as served:
            server = psutil.Process(served.process.pid)
            rss_before = server.memory_info().rss
            opened: list[tuple[int, bytes, asyncio.StreamReader, asyncio.StreamWriter]] = []
            gate = asyncio.Semaphore(256)  # connections being opened at once

            async def client() -> None:
                async with gate:
                    opened.append(await _open_stream(served.port))

            try:
                with anyio.fail_after(90):
                    async with anyio.create_task_group() as tg:
                        for _ in range(CLIENTS):
                            tg.start_soon(client)
                statuses = [status for status, *_ in opened]
                assert statuses.count(200) == CAP
                assert statuses.count(503) == CLIENTS - CAP
                refusals = [head for status, head, *_ in opened if status == 503]
                assert all(b"retry-after: 5" in head for head in refusals)
                start = time.monotonic()
                health = await anyio.to_thread.run_sync(_get, served.port, "/health/resources")
                assert health[0] == 200
                assert time.monotonic() - start < 5  # liveness bound, not a benchmark
                rss_growth = server.memory_info().rss - rss_before
                assert rss_growth < 30 * 2**20, f"server RSS grew {rss_growth / 2**20:.1f} MiB"
                with anyio.fail_after(10):
                    # The count appears with the next sample, in another process: poll.
                    while _refused_total(  # noqa: ASYNC110
                        (await anyio.to_thread.run_sync(_get, served.port, "/metrics"))[1]
                    ) != float(CLIENTS - CAP):
                        await anyio.sleep(0.1)

                served.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(20):
                    tails = [
                        await reader.read() for status, _, reader, _ in opened if status == 200
                    ]
                assert len(tails) == CAP
                assert all(tail.endswith(b"\r\n0\r\n\r\n") for tail in tails)
            finally:
                for *_, writer in opened:
                    writer.close()
        assert served.process.returncode in (0, -signal.SIGTERM)
        assert "Traceback" not in served.stderr
        assert "Exception in ASGI application" not in served.stderr
    finally:
        restore()


def _refused_total(exposition: bytes) -> float | None:
    for family in text_string_to_metric_families(exposition.decode()):
        if family.name == "resource_supervisor_stream_refused":
            return family.samples[0].value
    return None
