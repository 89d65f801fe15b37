"""
What the HTTP endpoints reveal, and how to put them behind the app's own access
control: the claims of the README's Security section.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import TYPE_CHECKING

import anyio
import httpx
import psutil
from fastapi import Depends, FastAPI, Header, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from resource_supervisor._config import build_settings
from resource_supervisor.integrations.fastapi import create_router, supervised_lifespan
from tests._loop_guard import blocking_setup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import pytest

    from resource_supervisor._supervisor import Supervisor

CANARY = "canary-value-4b1d"


@contextlib.asynccontextmanager
async def client_of(
    app: FastAPI, lifespan_app: FastAPI | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Run *lifespan_app*'s (default: *app*'s) lifespan; a client of *app* over ASGI."""
    owner = lifespan_app if lifespan_app is not None else app
    async with owner.router.lifespan_context(owner):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _values(data: object) -> Iterator[object]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from _values(value)
    elif isinstance(data, list):
        for item in data:
            yield from _values(item)
    else:
        yield data


def _double(x: int) -> int:
    return 2 * x


@blocking_setup("lists its child pids through psutil")
async def test_endpoints_expose_no_paths_environment_or_pids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/health/resources, /metrics and /metrics/stream carry memory and CPU figures
    and short labels only: no path, no environment value, no process id (of the
    service or of its workers), also with the process lane and a provider running."""
    monkeypatch.setenv("RS_EXPOSURE_SECRET", CANARY)
    app = FastAPI(lifespan=supervised_lifespan(build_settings(monitoring_enabled=False)))
    app.include_router(create_router())
    async with client_of(app) as client:
        sup: Supervisor = app.state.supervisor
        assert await sup.executors.run_in_process(_double, 21) == 42  # workers exist
        sup.register_metrics_provider("rag", lambda: {"docs": 3})
        await sup.update_metrics()
        health = (await client.get("/health/resources")).json()
        metrics = (await client.get("/metrics")).text
        stream = (await client.get("/metrics/stream", params={"limit": 1})).text
        pids = {os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))}
    assert len(pids) > 1
    event = json.loads(next(line for line in stream.splitlines() if line.startswith("data: "))[6:])
    assert event["memory_limit_bytes"] == health["memory_limit_bytes"]  # the stream is real
    strings: list[str] = []
    numbers: list[float] = []
    for value in [*_values(health), *_values(event)]:
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, int | float):
            numbers.append(float(value))
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            strings += [sample.name, *sample.labels, *sample.labels.values()]
            numbers.append(sample.value)
    assert strings
    assert numbers
    # No path, address or host: every string is a short identifier or label.
    odd = [s for s in strings if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s)]
    assert not odd
    assert not any("pid" in s.lower() for s in strings)
    assert not {float(pid) for pid in pids} & set(numbers)
    bodies = json.dumps(health) + metrics + stream
    secrets = [CANARY, os.getcwd(), *(v for v in os.environ.values() if "/" in v)]
    assert not [secret for secret in secrets if secret and secret in bodies]


def require_token(x_ops_token: str | None = Header(default=None)) -> None:
    """The app's own access control: a shared token in a header."""
    if x_ops_token != "s3cret":
        raise HTTPException(status_code=401, detail="operator token required")


async def test_router_behind_the_apps_authentication() -> None:
    """include_router(..., dependencies=[...]) puts /metrics, /health/resources and
    the stream behind the app's own check; they carry none of their own."""
    app = FastAPI(lifespan=supervised_lifespan(build_settings(monitoring_enabled=False)))
    app.include_router(create_router(), dependencies=[Depends(require_token)])
    async with client_of(app) as client:
        for path in ("/metrics", "/health/resources", "/metrics/stream?limit=1"):
            assert (await client.get(path)).status_code == 401, path
            ok = await client.get(path, headers={"x-ops-token": "s3cret"})
            assert ok.status_code == 200, path


async def test_router_on_a_separate_internal_app() -> None:
    """The router can live in a second app (served on an internal port) with no
    lifespan of its own: it reports the supervisor the service's app runs."""
    service = FastAPI(lifespan=supervised_lifespan(build_settings(monitoring_enabled=False)))
    ops = FastAPI()
    ops.include_router(create_router())
    async with client_of(ops, lifespan_app=service) as client:
        sup: Supervisor = service.state.supervisor
        with anyio.fail_after(10):
            body = (await client.get("/health/resources")).json()
        assert body["memory_limit_bytes"] == sup.metrics.memory_limit_bytes
        assert (await client.get("/metrics")).status_code == 200
