"""
HTTP helpers for the FastAPI tests: apps served by a real uvicorn subprocess, raw
requests that no client library normalises, and a bare ASGI call.

The app factories here are imported by ``uvicorn --factory tests._http:<name>`` in a
child process; they read their options from ``RS_TEST_*`` environment variables.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.staticfiles import StaticFiles

from resource_supervisor._config import build_settings
from resource_supervisor._supervisor import Supervisor
from resource_supervisor.integrations.fastapi import (
    LoadSheddingMiddleware,
    create_router,
    exempt_from_shedding,
    supervised_lifespan,
)
from resource_supervisor.testing import ScriptedSource
from tests._loop_guard import blocking_setup

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp, Message

    from resource_supervisor._config import SupervisorSettings

ROOT = Path(__file__).resolve().parent.parent


@blocking_setup("checks the static directory it mounts")
def shedding_app(
    source: ScriptedSource | None = None,
    static_dir: str | os.PathLike[str] | None = None,
    settings: SupervisorSettings | None = None,
    **router: object,
) -> FastAPI:
    """
    An app with the shedding middleware, the router, probe routes, a normal route,
    a marked route, and optionally ``StaticFiles`` mounted at ``/``.
    """
    resolved = settings if settings is not None else build_settings(monitoring_enabled=False)
    app = FastAPI(
        lifespan=supervised_lifespan(
            resolved, supervisor_factory=lambda s: Supervisor(s, source=source)
        )
    )
    app.add_middleware(LoadSheddingMiddleware)
    app.include_router(create_router(**router))  # type: ignore[arg-type]

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/healthzz")
    async def healthzz() -> PlainTextResponse:
        return PlainTextResponse("not a probe")

    @app.api_route("/work", methods=["GET", "HEAD", "OPTIONS", "POST"])
    async def work() -> PlainTextResponse:
        return PlainTextResponse("worked")

    @app.get("/ready")
    @exempt_from_shedding
    async def ready() -> PlainTextResponse:
        return PlainTextResponse("ready")

    if static_dir is not None:
        app.mount("/", StaticFiles(directory=static_dir), name="static")
    return app


def critical_app() -> FastAPI:
    """``shedding_app`` at CRITICAL for a uvicorn subprocess (``RS_TEST_STATIC``: files)."""
    source = ScriptedSource()
    source.set(memory_percent=99.0)
    return shedding_app(source, static_dir=os.environ.get("RS_TEST_STATIC"))


def streaming_app() -> FastAPI:
    """
    An app sampling every ``RS_TEST_INTERVAL`` seconds whose router allows
    ``RS_TEST_MAX_STREAMS`` streams, for a uvicorn subprocess.
    """
    settings = build_settings(monitoring_interval=float(os.environ.get("RS_TEST_INTERVAL", "1")))
    return shedding_app(
        settings=settings, max_streams=int(os.environ.get("RS_TEST_MAX_STREAMS", "256"))
    )


@dataclass
class Served:
    """A running uvicorn subprocess: its port and, once stopped, its stderr."""

    port: int
    process: subprocess.Popen[bytes]
    stderr: str = field(default="")


@contextlib.contextmanager
@blocking_setup("starts the server process and waits for it")
def uvicorn_subprocess(
    factory: str, *args: str, env: dict[str, str] | None = None, startup_timeout: float = 30
) -> Iterator[Served]:
    """
    Serve ``tests._http:<factory>`` with the uvicorn CLI on a socket bound here (no
    port race), wait until it answers, and stop it with SIGTERM on exit (then
    SIGKILL after 20 s); its stderr is in ``Served.stderr`` afterwards.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        f"tests._http:{factory}",
        "--factory",
        "--fd",
        str(sock.fileno()),
        "--log-level",
        "warning",
        "--backlog",
        "4096",
        *args,
    ]
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    # stderr goes to a file, not a pipe: a server logging more than a pipe holds
    # must not block on it while the test waits for the server.
    with (
        sock,
        tempfile.TemporaryFile() as log,
        subprocess.Popen(
            command, pass_fds=(sock.fileno(),), stderr=log, env=child_env, cwd=ROOT
        ) as process,
    ):
        served = Served(port, process)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                assert process.poll() is None, "uvicorn exited during startup"
                with contextlib.suppress(OSError):
                    raw_request(port, "GET", "/", timeout=2)
                    break  # any answer: it serves
                assert time.monotonic() < deadline, "uvicorn did not answer in time"
                time.sleep(0.05)
            yield served
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
                process.kill()
                process.wait()
            log.seek(0)
            served.stderr = log.read().decode(errors="replace")


@blocking_setup("sends one raw request to a server process and reads the answer")
def raw_request(port: int, method: str, target: str, *, timeout: float = 10) -> tuple[int, bytes]:
    """
    Send one request with *target* exactly as given (no client normalises it) and
    return the status and the body (the connection is closed after it).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def asgi_request(
    app: ASGIApp, method: str, path: str, *, root_path: str = ""
) -> tuple[int, bytes]:
    """
    Call *app* once with a scope whose ``path`` is *path* as given (already decoded,
    as a server passes it), ``root_path`` in front of it as uvicorn does.
    """
    full = root_path + path
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": full,
        "raw_path": full.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    status = 0
    body = b""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(scope, receive, send)
    return status, body
