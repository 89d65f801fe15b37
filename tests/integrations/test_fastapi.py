"""Tests of the FastAPI integration: lifespan, dependency, routes, SSE and load shedding."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Annotated

import anyio
import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from resource_supervisor._config import build_settings
from resource_supervisor._snapshot import PressureLevel
from resource_supervisor._supervisor import Supervisor
from resource_supervisor.integrations.fastapi import (
    LoadSheddingMiddleware,
    create_router,
    exempt_from_shedding,
    get_supervisor,
    snapshot_to_json,
    supervised_lifespan,
)
from resource_supervisor.testing import ScriptedSource

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from resource_supervisor._config import SupervisorSettings

SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


def make_app(
    source: ScriptedSource | None = None,
    settings: SupervisorSettings | None = None,
    **middleware: object,
) -> FastAPI:
    """An app with the router, the middleware, a normal route and a marked route."""
    resolved = settings if settings is not None else build_settings(monitoring_enabled=False)

    def factory(s: SupervisorSettings) -> Supervisor:
        return Supervisor(s, source=source)

    app = FastAPI(lifespan=supervised_lifespan(resolved, supervisor_factory=factory))
    app.add_middleware(LoadSheddingMiddleware, **middleware)  # type: ignore[arg-type]
    app.include_router(create_router())

    @app.get("/work")
    async def work(sup: SupervisorDep) -> dict[str, object]:
        return {"level": sup.level.name, "current": Supervisor.current() is sup}

    @app.get("/ready")
    @exempt_from_shedding
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/internal/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    return app


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client over the ASGI transport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_lifespan_stores_the_running_supervisor() -> None:
    """The lifespan enters a supervisor, exposes it on app.state and to the dependency."""
    app = make_app()
    async with running(app) as client:
        sup = app.state.supervisor
        assert isinstance(sup, Supervisor)
        response = await client.get("/work")
        assert response.status_code == 200
        assert response.json() == {"level": "NORMAL", "current": True}
    assert not hasattr(app.state, "supervisor")
    with pytest.raises(Exception, match="executors"):
        sup.executors  # noqa: B018  # closed after the lifespan ended


async def test_lifespan_composes_with_the_apps_own_lifespan() -> None:
    """The app's lifespan runs inside the supervisor's: it sees it at startup and at shutdown."""
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def inner(app: object) -> AsyncIterator[dict[str, object]]:
        sup = app.state.supervisor  # type: ignore[attr-defined]
        seen.append(f"start {sup.level.name}")
        yield {"db": "connected"}
        seen.append(f"stop {Supervisor.current() is sup}")

    app = FastAPI(
        lifespan=supervised_lifespan(build_settings(monitoring_enabled=False), inner=inner)
    )
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        assert state["db"] == "connected"
        assert state["supervisor"] is app.state.supervisor
    assert seen == ["start NORMAL", "stop True"]


async def test_lifespan_loads_settings_from_a_config_file(tmp_path: object) -> None:
    """With config_path, the settings come from the YAML file when the app starts."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "config.yaml"
    await anyio.Path(path).write_text(
        "resource_management:\n  monitoring_interval: 7\n  monitoring_enabled: false\n"
    )
    app = FastAPI(lifespan=supervised_lifespan(config_path=path))
    async with app.router.lifespan_context(app):
        assert app.state.supervisor.settings.monitoring_interval == 7.0


def test_lifespan_rejects_settings_and_config_path_together() -> None:
    """Settings and a config path are two answers to one question: refuse both."""
    with pytest.raises(TypeError):
        supervised_lifespan(build_settings(), config_path="x.yaml")


async def test_dependency_without_supervisor_is_a_clear_500() -> None:
    """A route depending on the supervisor in an app without the lifespan gets 500 and why."""
    app = FastAPI()

    @app.get("/work")
    async def work(sup: SupervisorDep) -> dict[str, str]:
        return {"level": sup.level.name}  # pragma: no cover - never reached

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/work")
    assert response.status_code == 500
    assert "supervised_lifespan" in response.json()["detail"]


async def test_health_resources_reports_level_and_memory() -> None:
    """/health/resources returns the level and the memory figures of the latest snapshot."""
    app = make_app()
    async with running(app) as client:
        snap = app.state.supervisor.metrics
        body = (await client.get("/health/resources")).json()
    assert body["status"] == "ok"
    assert body["level"] == "NORMAL"
    assert body["memory_limit_bytes"] == snap.memory_limit_bytes
    assert body["memory_limit_source"] == snap.memory_limit_source
    assert 0 <= body["memory_percent"] <= 100


async def test_metrics_route_serves_prometheus_text() -> None:
    """/metrics is the Prometheus exposition of the latest snapshot, including providers."""
    app = make_app()
    async with running(app) as client:
        sup = app.state.supervisor
        sup.register_metrics_provider("rag", lambda: {"docs": 3})
        snap = await sup.update_metrics()
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("resource_supervisor_memory_working_set_bytes", ())] == snap.memory_used_bytes
    assert samples[
        ("resource_supervisor_provider_value", (("metric", "docs"), ("provider", "rag")))
    ] == (3.0)


async def test_stream_with_limit_sends_that_many_snapshot_events() -> None:
    """/metrics/stream?limit=N sends the current snapshot, then new ones, N events in all."""
    app = make_app()
    async with running(app) as client:
        sup = app.state.supervisor

        async def publish() -> None:
            # Publishes once the stream is subscribed: wait until the handler blocks.
            await anyio.wait_all_tasks_blocked()
            await sup.update_metrics()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            response = await client.get("/metrics/stream", params={"limit": 2})
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [block for block in response.text.split("\n\n") if block]
        assert len(events) == 2
        first = events[0].splitlines()
        assert first[0] == "id: 1"
        assert first[1] == "event: snapshot"
        data = json.loads(first[2].removeprefix("data: "))
        assert data["memory_limit_bytes"] == sup.metrics.memory_limit_bytes
        assert data["pressure_level"] == 0


async def test_stream_rejects_a_limit_below_one() -> None:
    """A limit of 0 is a client error, not an empty stream."""
    app = make_app()
    async with running(app) as client:
        response = await client.get("/metrics/stream", params={"limit": 0})
    assert response.status_code == 422


def test_snapshot_to_json_makes_the_level_an_int_and_drops_nan() -> None:
    """JSON has no NaN: non-finite floats are left out; the level is its number."""
    out = snapshot_to_json({"pressure_level": PressureLevel.WARNING, "x": float("nan"), "y": 1.5})
    assert out == {"pressure_level": 1, "y": 1.5}
    assert json.dumps(out)


async def test_shedding_at_critical_and_recovery() -> None:
    """At CRITICAL normal routes get 503 + Retry-After; probes, /metrics and marked routes
    still answer; back at NORMAL everything answers again."""
    source = ScriptedSource()
    settings = build_settings(monitoring_enabled=False, monitoring_interval=2.5)
    app = make_app(source, settings)
    async with running(app) as client:
        sup = app.state.supervisor
        assert (await client.get("/work")).status_code == 200

        source.set(memory_percent=95.0)
        assert (await sup.update_metrics()).pressure_level is PressureLevel.CRITICAL
        shed = await client.get("/work")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "3"  # monitoring_interval rounded up
        assert shed.json()["level"] == "CRITICAL"
        assert (await client.get("/internal/ping")).status_code == 503
        health = await client.get("/health/resources")
        assert health.status_code == 200
        assert health.json()["status"] == "overloaded"
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/ready")).status_code == 200

        source.set(memory_percent=10.0)
        assert (await sup.update_metrics()).pressure_level is PressureLevel.NORMAL
        assert (await client.get("/work")).status_code == 200


async def test_shedding_options_exempt_paths_level_and_retry_after() -> None:
    """Configured exempt paths are never shed; shed_at=WARNING sheds earlier; retry_after wins."""
    source = ScriptedSource()
    app = make_app(
        source,
        exempt_paths=("/internal",),
        shed_at=PressureLevel.WARNING,
        retry_after=7,
    )
    async with running(app) as client:
        sup = app.state.supervisor
        source.set(memory_percent=80.0)  # between warning (75) and aggressive (85)
        assert (await sup.update_metrics()).pressure_level is PressureLevel.WARNING
        shed = await client.get("/work")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "7"
        assert (await client.get("/internal/ping")).status_code == 200
        # The router's routes stay exempt through their marker, whatever the paths.
        assert (await client.get("/health/resources")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_marked_routes_stay_exempt_under_a_prefix_and_nested_routers() -> None:
    """Routes marked exempt keep answering at CRITICAL wherever they are mounted."""
    from fastapi import APIRouter

    source = ScriptedSource()
    app = FastAPI(
        lifespan=supervised_lifespan(
            build_settings(monitoring_enabled=False),
            supervisor_factory=lambda s: Supervisor(s, source=source),
        )
    )
    app.add_middleware(LoadSheddingMiddleware, exempt_paths=())
    outer = APIRouter(prefix="/api")
    outer.include_router(create_router(prefix="/ops"))

    @outer.get("/items/{item_id}")
    @exempt_from_shedding
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @outer.get("/slow")
    async def slow() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(outer, prefix="/v1")
    async with running(app) as client:
        source.set(memory_percent=99.0)
        await app.state.supervisor.update_metrics()
        assert (await client.get("/v1/api/ops/health/resources")).status_code == 200
        assert (await client.get("/v1/api/items/5")).json() == {"item": 5}
        assert (await client.get("/v1/api/slow")).status_code == 503
        assert (await client.get("/health")).status_code == 503  # no default paths here


async def test_middleware_without_supervisor_passes_everything() -> None:
    """Without a running supervisor the middleware never sheds."""
    app = FastAPI()
    app.add_middleware(LoadSheddingMiddleware)

    @app.get("/work")
    async def work() -> dict[str, bool]:
        return {"ok": True}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/work")).status_code == 200


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the test process keeps its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def test_sse_over_uvicorn_and_subscription_closed_on_disconnect() -> None:
    """Under real uvicorn the SSE stream delivers successive snapshots, and a client
    that disconnects has its subscription closed (stream_subscribers back to 0)."""
    settings = build_settings(monitoring_interval=0.1)
    app = make_app(settings=settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = _Server(config)
    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(20):
                while not server.started:  # noqa: ASYNC110  # uvicorn offers no event
                    await anyio.sleep(0.01)
                sup: Supervisor = app.state.supervisor
                ids: list[int] = []
                stamps: list[float] = []
                async with (
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
                    client.stream("GET", "/metrics/stream") as response,
                ):
                    assert response.status_code == 200
                    # Held by name: a generator left by ``break`` and dropped is closed
                    # by the loop at its next checkpoint, which closes the response.
                    lines = response.aiter_lines()
                    async for line in lines:
                        if line.startswith("id: "):
                            ids.append(int(line.removeprefix("id: ")))
                        elif line.startswith("data: "):
                            stamps.append(json.loads(line[6:])["last_metrics_update_ts"])
                            if len(stamps) == 4:
                                break
                    assert (await sup.update_metrics())["stream_subscribers"] == 1
                    del lines  # from here the response may close
                assert ids == [1, 2, 3, 4]
                assert stamps == sorted(stamps)
                assert len(set(stamps)) == 4
                # The server notices the disconnect on its own: poll the public count.
                while (await sup.update_metrics())["stream_subscribers"] != 0:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            server.should_exit = True


def test_missing_extra_names_it() -> None:
    """Importing an integration without its extra raises ImportError naming the extra."""
    for module, extra, blocked in (
        ("fastapi", "fastapi", "fastapi"),
        ("prometheus", "prometheus", "prometheus_client"),
    ):
        code = (
            f"import sys; sys.modules[{blocked!r}] = None\n"
            "try:\n"
            f"    import resource_supervisor.integrations.{module}\n"
            "except ImportError as exc:\n"
            "    print(exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert f'pip install "resource-supervisor[{extra}]"' in out
