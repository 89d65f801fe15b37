"""
FastAPI and Starlette integration (extra ``[fastapi]``).

Covers: :func:`supervised_lifespan` (run a :class:`Supervisor` for the app's
lifetime, composed with the app's own lifespan), :func:`get_supervisor` (a
dependency), :func:`create_router` (``/metrics``, ``/health/resources`` and the
``/metrics/stream`` Server-Sent Events), :class:`LoadSheddingMiddleware` (503 with
``Retry-After`` at CRITICAL), :func:`exempt_from_shedding`, and re-exports
:class:`AdmissionMiddleware` (adaptive concurrency limit; see its module). Does not cover: the
Prometheus format itself (:mod:`resource_supervisor.integrations.prometheus`) or
how pressure is graded (:mod:`resource_supervisor._policy`).

Serving ``/metrics/stream`` under uvicorn: uvicorn waits for open responses before
it runs the lifespan shutdown, so give it ``timeout_graceful_shutdown`` (seconds)
or an SSE client that never disconnects holds the shutdown; clients may also ask
for ``?limit=N`` events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

try:
    from fastapi import APIRouter, HTTPException, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resource_supervisor.integrations.fastapi needs the 'fastapi' extra: "
        'pip install "resource-supervisor[fastapi]"'
    ) from exc

from .._container import container_health
from ._admission_middleware import AdmissionMiddleware as AdmissionMiddleware
from ._app_supervisor import get_supervisor as get_supervisor
from ._app_supervisor import supervised_lifespan as supervised_lifespan
from ._shedding import DEFAULT_EXEMPT_PATHS as DEFAULT_EXEMPT_PATHS
from ._shedding import LoadSheddingMiddleware as LoadSheddingMiddleware
from ._shedding import exempt_from_shedding as exempt_from_shedding
from ._sse import DEFAULT_MAX_STREAMS, SnapshotStream, StreamHub
from ._sse import snapshot_to_json as snapshot_to_json

if TYPE_CHECKING:
    from .._snapshot import MetricsSnapshot

__all__ = (
    "DEFAULT_EXEMPT_PATHS",
    "DEFAULT_MAX_STREAMS",
    "AdmissionMiddleware",
    "LoadSheddingMiddleware",
    "create_router",
    "exempt_from_shedding",
    "get_supervisor",
    "snapshot_to_json",
    "supervised_lifespan",
)


def _health(snapshot: MetricsSnapshot) -> dict[str, object]:
    level = snapshot.pressure_level
    return {
        "status": {0: "ok", 1: "degraded", 2: "overloaded"}[int(level)],
        "level": level.name,
        "memory_percent": snapshot.memory_percent,
        "memory_used_bytes": snapshot.memory_used_bytes,
        "memory_limit_bytes": snapshot.memory_limit_bytes,
        "memory_available_bytes": snapshot.memory_available_bytes,
        "memory_limit_source": snapshot.memory_limit_source,
        "system_cpu_percent": snapshot.system_cpu_percent,
        "process_rss_bytes": snapshot.process_rss_bytes,
        "active_sessions": snapshot.active_sessions_rag,
        "last_metrics_update_ts": snapshot.last_metrics_update_ts,
    }


def create_router(
    prefix: str = "",
    *,
    metrics: bool | None = None,
    stream_buffer: int = 16,
    heartbeat: float = 15.0,
    max_streams: int = DEFAULT_MAX_STREAMS,
    stream_refused_status: Literal[503, 429] = 503,
    stream_retry_after: float = 5.0,
    tags: list[str] | None = None,
) -> APIRouter:
    """
    Build a router with the supervisor's endpoints, all exempt from load shedding.

    * ``GET {prefix}/metrics``: Prometheus text exposition of the latest snapshot
      (needs the ``[prometheus]`` extra).
    * ``GET {prefix}/health/resources``: JSON with the level and key metrics;
      always 200 (``status`` is ``ok``, ``degraded`` or ``overloaded``).
    * ``GET {prefix}/metrics/stream[?limit=N]``: Server-Sent Events, one
      ``snapshot`` event (JSON data) per sample, starting with the current one.
      Each snapshot is encoded once for all clients. At most *max_streams*
      clients at once (per router, so per worker process); one more is answered
      *stream_refused_status* with ``Retry-After`` and counted in the snapshot's
      ``stream_refused_total``.

    Args:
        prefix: Path prefix, e.g. ``"/ops"``.
        metrics: Include ``/metrics``; ``None`` includes it when
            ``prometheus_client`` is installed.
        stream_buffer: Snapshots buffered per SSE client; a slow client loses the
            oldest ones.
        heartbeat: Seconds between keep-alive comments on a quiet stream.
        max_streams: Concurrent ``/metrics/stream`` clients served.
        stream_refused_status: The status of a refused stream: 503 (default) or 429.
        stream_retry_after: ``Retry-After`` seconds of a refused stream.
        tags: OpenAPI tags of the routes.

    Returns:
        The router; ``app.include_router(create_router())``.

    Raises:
        ImportError: If *metrics* is true and the ``[prometheus]`` extra is missing.
        ValueError: If *max_streams* or *stream_buffer* is below 1, *heartbeat* or
            *stream_retry_after* is not positive, or *stream_refused_status* is
            neither 503 nor 429.
    """
    hub = StreamHub(
        max_streams=max_streams,
        refused_status=stream_refused_status,
        retry_after=stream_retry_after,
        buffer=stream_buffer,
        heartbeat=heartbeat,
    )
    if metrics is None or metrics:
        try:
            from prometheus_client import CollectorRegistry, generate_latest

            from .prometheus import SupervisorCollector
        except ImportError:
            if metrics:
                raise
            metrics = False
        else:
            metrics = True
    router = APIRouter(prefix=prefix, tags=list(tags) if tags is not None else ["resources"])

    if metrics:

        @exempt_from_shedding
        async def prometheus_metrics(request: Request) -> PlainTextResponse:
            """
            Format the latest snapshot (no sampling: a scrape costs well under 1 ms).

            Cancellation:
                Nothing to undo: it only reads the latest snapshot.
            """
            sup = get_supervisor(request)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SupervisorCollector(sup))
            return PlainTextResponse(
                generate_latest(registry),
                media_type="text/plain; version=0.0.4; charset=utf-8",
            )

        router.add_api_route(
            "/metrics",
            prometheus_metrics,
            methods=["GET"],
            response_class=PlainTextResponse,
            summary="Prometheus metrics of the resource supervisor",
        )

    @exempt_from_shedding
    async def health_resources(request: Request) -> JSONResponse:
        """
        Report the pressure level and the key memory and CPU figures.

        Cancellation:
            Nothing to undo: it only reads the latest snapshot.
        """
        sup = get_supervisor(request)
        body = _health(sup.metrics)
        peers = sup.peers()
        if peers:
            body["container"] = container_health(peers)
        return JSONResponse(body)

    router.add_api_route(
        "/health/resources",
        health_resources,
        methods=["GET"],
        summary="Resource pressure and key metrics",
    )

    @exempt_from_shedding
    async def metrics_stream(request: Request, limit: int | None = None) -> Response:
        """
        Stream snapshots as Server-Sent Events.

        Cancellation:
            The subscription is closed when the client disconnects or the
            request is cancelled; a server cancelling the request at shutdown
            gets a cleanly ended body, not an error.
        """
        if limit is not None and limit < 1:
            raise HTTPException(status_code=422, detail="limit must be at least 1")
        sup = get_supervisor(request)
        return SnapshotStream(hub, sup, limit=limit)

    router.add_api_route(
        "/metrics/stream",
        metrics_stream,
        methods=["GET"],
        response_model=None,
        response_class=PlainTextResponse,
        summary="Server-Sent Events of metric snapshots",
    )
    return router
