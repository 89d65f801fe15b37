"""Tests of the HTTP admission middleware over real FastAPI apps (httpx ASGI transport)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from fastapi import FastAPI

from resource_supervisor import AdmissionLimiter, AdmissionRejectedError
from resource_supervisor._admission._limit import LimitParams
from resource_supervisor._config import build_settings
from resource_supervisor._supervisor import Supervisor
from resource_supervisor.integrations.fastapi import (
    AdmissionMiddleware,
    LoadSheddingMiddleware,
    create_router,
    exempt_from_shedding,
    supervised_lifespan,
)
from resource_supervisor.testing import ScriptedSource

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Message, Receive, Scope, Send


def one_slot() -> AdmissionLimiter:
    """A limiter that admits one request and queues none."""
    return AdmissionLimiter(LimitParams(initial_limit=1, max_limit=1), queue_limit=0)


def make_app(gate: anyio.Event, **middleware: object) -> FastAPI:
    """An app whose /slow waits for *gate*, with health, marked and raising routes."""
    app = FastAPI()
    app.add_middleware(AdmissionMiddleware, **middleware)  # type: ignore[arg-type]

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await gate.wait()
        return {"done": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/ready")
    @exempt_from_shedding
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/own-rejection")
    async def own() -> dict[str, bool]:
        raise AdmissionRejectedError(1, 1, 0, 0, 1.0)

    return app


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_beyond_limit_and_queue_answers_503_with_retry_after() -> None:
    """With the slot taken and no queue, a request gets 503 and Retry-After at once."""
    gate = anyio.Event()
    limiter = one_slot()
    app = make_app(gate, limiter=limiter)
    middleware_answers: list[httpx.Response] = []
    with anyio.fail_after(5):
        async with client_for(app) as client, anyio.create_task_group() as tg:

            async def first() -> None:
                middleware_answers.append(await client.get("/slow"))

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().in_flight == 1
            refused = await client.get("/slow")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["limit"] == 1
            # exempt paths and marked routes pass while the slot is taken
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/ready")).status_code == 200
            gate.set()
    assert middleware_answers[0].status_code == 200
    stats = limiter.statistics()
    assert (stats.admitted_total, stats.rejected_total, stats.in_flight) == (1, 1, 0)


async def test_status_429_and_the_apps_own_rejection_propagates() -> None:
    """status_code=429 answers 429; an AdmissionRejectedError raised by the app is not ours."""
    gate = anyio.Event()
    limiter = one_slot()
    app = make_app(gate, limiter=limiter, status_code=429)
    with anyio.fail_after(5):
        async with client_for(app) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/slow")
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().in_flight == 1
            assert (await client.get("/slow")).status_code == 429
            gate.set()
        async with client_for(app) as client:
            with pytest.raises(AdmissionRejectedError):
                await client.get("/own-rejection")
    with pytest.raises(ValueError, match="429 or 503"):
        AdmissionMiddleware(app, status_code=500)  # type: ignore[arg-type]


async def test_without_a_limiter_or_supervisor_everything_passes() -> None:
    """No limiter given and no supervisor running: requests go straight to the app."""
    gate = anyio.Event()
    gate.set()
    app = make_app(gate)
    async with client_for(app) as client:
        assert (await client.get("/slow")).status_code == 200


async def test_follows_the_supervisor_limiter_and_its_reject_status() -> None:
    """
    Under supervised_lifespan the middleware uses sup.admission and the configured
    reject status; the supervisor's routes stay exempt; memory shedding answers first.
    """
    settings = build_settings(
        monitoring_enabled=False,
        admission={"initial_limit": 1, "max_limit": 1, "queue_limit": 0, "reject_status": 429},
    )
    source = ScriptedSource()
    gate = anyio.Event()
    app = FastAPI(
        lifespan=supervised_lifespan(
            settings, supervisor_factory=lambda s: Supervisor(s, source=source)
        )
    )
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(LoadSheddingMiddleware)
    app.include_router(create_router())

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await gate.wait()
        return {"done": True}

    with anyio.fail_after(5):
        async with client_for(app) as client, anyio.create_task_group() as tg:
            sup = app.state.supervisor
            tg.start_soon(client.get, "/slow")
            await anyio.wait_all_tasks_blocked()
            assert sup.admission.statistics().in_flight == 1
            assert (await client.get("/slow")).status_code == 429
            assert (await client.get("/health/resources")).status_code == 200
            metrics = await client.get("/metrics")
            assert "resource_supervisor_admission_limit" in metrics.text
            source.set(memory_percent=99.0)
            await sup.update_metrics()
            shed = await client.get("/slow")
            assert shed.status_code == 503  # shed for memory before taking a slot
            assert sup.admission.statistics().rejected_total == 1
            gate.set()


async def test_non_http_traffic_and_a_closed_limiter_pass_through() -> None:
    """Non-HTTP scopes never take a slot; after the limiter closed requests still run."""
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    limiter = one_slot()
    middleware = AdmissionMiddleware(inner, limiter=limiter)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    await middleware({"type": "websocket", "path": "/ws"}, receive, send)
    assert seen == ["lifespan", "websocket"]
    assert limiter.statistics().admitted_total == 0

    gate = anyio.Event()
    gate.set()
    app = make_app(gate, limiter=limiter)
    async with client_for(app) as client:
        limiter.close()
        assert (await client.get("/slow")).status_code == 200


async def test_a_marked_route_added_after_the_first_request_is_exempt() -> None:
    """The marked routes are looked up once per routes list, and again when it grows."""
    gate = anyio.Event()
    limiter = one_slot()
    app = make_app(gate, limiter=limiter)
    with anyio.fail_after(5):
        async with client_for(app) as client, anyio.create_task_group() as tg:
            assert (await client.get("/ready")).status_code == 200  # walks the routes

            @app.get("/late")
            @exempt_from_shedding
            async def late() -> dict[str, bool]:
                return {"late": True}

            tg.start_soon(client.get, "/slow")
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().in_flight == 1
            assert (await client.get("/late")).status_code == 200
            assert (await client.get("/ready/../slow")).status_code == 503
            gate.set()
