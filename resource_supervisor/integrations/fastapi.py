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

import contextlib
import math
from typing import TYPE_CHECKING, Final, Literal, TypeVar, overload

try:
    from fastapi import APIRouter, HTTPException, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resource_supervisor.integrations.fastapi needs the 'fastapi' extra: "
        'pip install "resource-supervisor[fastapi]"'
    ) from exc

from .._config import load_settings
from .._container import container_health
from .._exceptions import NoSupervisorError, SupervisorClosedError
from .._snapshot import PressureLevel
from .._supervisor import Supervisor
from ._admission_middleware import AdmissionMiddleware as AdmissionMiddleware
from ._paths import app_path, exempt_prefix, is_exempt
from ._sse import DEFAULT_MAX_STREAMS, SnapshotStream, StreamHub
from ._sse import snapshot_to_json as snapshot_to_json

if TYPE_CHECKING:
    import os
    import re
    from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
    from contextlib import AbstractAsyncContextManager

    from starlette.types import ASGIApp, Receive, Scope, Send

    from .._config import SupervisorSettings
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

F = TypeVar("F", bound="Callable[..., object]")
AppT = TypeVar("AppT")

_EXEMPT_ATTR: Final = "__resource_supervisor_exempt__"
_STATE_KEY: Final = "supervisor"

DEFAULT_EXEMPT_PATHS: Final = (
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
)
"""Paths (and everything below them) that are never shed by default."""


# -- lifespan ----------------------------------------------------------------------


@overload
def supervised_lifespan(
    settings: SupervisorSettings | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    inner: None = None,
    supervisor_factory: Callable[[SupervisorSettings], Supervisor] = ...,
) -> Callable[[object], AbstractAsyncContextManager[dict[str, object]]]: ...


@overload
def supervised_lifespan(
    settings: SupervisorSettings | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    inner: Callable[[AppT], AbstractAsyncContextManager[Mapping[str, object] | None]],
    supervisor_factory: Callable[[SupervisorSettings], Supervisor] = ...,
) -> Callable[[AppT], AbstractAsyncContextManager[dict[str, object]]]: ...


def supervised_lifespan(
    settings: SupervisorSettings | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    inner: Callable[[AppT], AbstractAsyncContextManager[Mapping[str, object] | None]] | None = None,
    supervisor_factory: Callable[[SupervisorSettings], Supervisor] = Supervisor,
) -> Callable[[AppT], AbstractAsyncContextManager[dict[str, object]]]:
    """
    Build a lifespan that runs a :class:`Supervisor` while the app runs.

    Use as ``FastAPI(lifespan=supervised_lifespan())``. The supervisor is entered
    before the app's own lifespan (*inner*) starts and exited after it ends, so the
    app's startup code can already use it. It is stored on ``app.state.supervisor``
    and in the lifespan state (``request.state.supervisor``), and
    :meth:`Supervisor.current` finds it from request handlers.

    Args:
        settings: Settings to use; ``None`` loads them with
            :func:`load_settings` from *config_path* and the environment when the
            app starts.
        config_path: YAML file read when *settings* is ``None``.
        inner: The app's own lifespan (``app -> async context manager``), typed
            as FastAPI and Starlette lifespans are: stateless (yielding ``None``)
            or yielding a mapping (a ``TypedDict`` too), which is merged into the
            lifespan state. Its app type is the result's, so a lifespan for
            ``FastAPI`` makes a lifespan for ``FastAPI``.
        supervisor_factory: Builds the supervisor from the settings (tests pass
            one that adds a scripted source).

    Returns:
        A lifespan callable for ``FastAPI(lifespan=...)`` or ``Starlette(lifespan=...)``.

    Raises:
        TypeError: If both *settings* and *config_path* are given.
    """
    if settings is not None and config_path is not None:
        raise TypeError("give settings or config_path, not both")

    @contextlib.asynccontextmanager
    async def lifespan(app: AppT) -> AsyncIterator[dict[str, object]]:
        resolved = settings if settings is not None else load_settings(config_path)
        async with supervisor_factory(resolved) as sup:
            state = getattr(app, "state", None)
            if state is not None:
                state.supervisor = sup
            try:
                if inner is None:
                    yield {_STATE_KEY: sup}
                else:
                    async with inner(app) as inner_state:
                        yield {**(inner_state or {}), _STATE_KEY: sup}
            finally:
                if state is not None and getattr(state, _STATE_KEY, None) is sup:
                    delattr(state, _STATE_KEY)

    return lifespan


# -- dependency --------------------------------------------------------------------


def _find_supervisor(scope: Mapping[str, object]) -> Supervisor | None:
    """The supervisor for a request: lifespan state, then app state, then current()."""
    state = scope.get("state")
    if isinstance(state, dict):
        found = state.get(_STATE_KEY)
        if isinstance(found, Supervisor):
            return found
    app = scope.get("app")
    found = getattr(getattr(app, "state", None), _STATE_KEY, None)
    if isinstance(found, Supervisor):
        return found
    try:
        return Supervisor.current()
    except NoSupervisorError:
        return None


def get_supervisor(request: Request) -> Supervisor:
    """
    FastAPI dependency: the supervisor running for this app.

    Use as ``sup: Supervisor = Depends(get_supervisor)``.

    Args:
        request: The request (injected by FastAPI).

    Returns:
        The running supervisor.

    Raises:
        HTTPException: 500 if no supervisor runs (the app lacks
            ``lifespan=supervised_lifespan()``); 503 if it is shutting down.
    """
    sup = _find_supervisor(request.scope)
    if sup is None:
        raise HTTPException(
            status_code=500,
            detail="no resource supervisor is running: create the app with "
            "FastAPI(lifespan=supervised_lifespan())",
        )
    try:
        sup.metrics  # noqa: B018  # raises before entry
        sup.executors  # noqa: B018  # raises once closed
    except SupervisorClosedError:
        raise HTTPException(
            status_code=503,
            detail="the resource supervisor is not running (starting or shutting down)",
            headers={"Retry-After": "1"},
        ) from None
    return sup


# -- routes ------------------------------------------------------------------------


def exempt_from_shedding(endpoint: F) -> F:
    """
    Mark a route's endpoint as never shed by :class:`LoadSheddingMiddleware`.

    Apply it below the route decorator::

        @app.get("/ready")
        @exempt_from_shedding
        async def ready() -> dict[str, str]: ...

    Args:
        endpoint: The endpoint function.

    Returns:
        The same function, marked.
    """
    setattr(endpoint, _EXEMPT_ATTR, True)
    return endpoint


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


# -- middleware --------------------------------------------------------------------


class LoadSheddingMiddleware:
    """
    ASGI middleware that answers 503 with ``Retry-After`` while memory pressure is
    at or above *shed_at* (CRITICAL by default), so the service sheds new work
    instead of running out of memory.

    Never shed: paths equal to or below an entry of *exempt_paths* (health probes
    and ``/metrics`` by default), matched segment by segment on the path inside
    the app (without the server's ``root_path``) once ``.``, ``..`` and empty
    segments are resolved, so ``/healthzz`` is not ``/healthz`` and
    ``/health/../big.txt`` is shed; endpoints marked with
    :func:`exempt_from_shedding` (every route of :func:`create_router` is), and
    non-HTTP traffic (lifespan, websockets). Without a running supervisor every
    request passes. At NORMAL the cost per request is one attribute read.

    Args:
        app: The ASGI app to wrap (``app.add_middleware(LoadSheddingMiddleware)``).
        exempt_paths: Path prefixes never shed (``"/health"``; ``"/"`` exempts all).
        shed_at: The lowest level that sheds.
        retry_after: ``Retry-After`` seconds; ``None`` uses the supervisor's
            ``monitoring_interval`` (rounded up, at least 1), when the level may
            next change.
        supervisor: The supervisor to follow; ``None`` finds the app's.

    Raises:
        ValueError: If an exempt path does not start with ``/`` or has ``.``,
            ``..`` or empty segments.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        exempt_paths: Collection[str] = DEFAULT_EXEMPT_PATHS,
        shed_at: PressureLevel = PressureLevel.CRITICAL,
        retry_after: float | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.app = app
        self._exempt = tuple(exempt_prefix(path) for path in exempt_paths)
        self._shed_at = shed_at
        self._retry_after = retry_after
        self._supervisor = supervisor
        self.shed_total = 0
        """Requests answered with 503 so far."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """
        Handle one ASGI call: pass it on, or answer 503 while shedding.

        Cancellation:
            As the wrapped app's; a shed request does no work to undo.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sup = self._supervisor if self._supervisor is not None else _find_supervisor(scope)
        if sup is None or sup.level < self._shed_at or self._is_exempt(scope):
            await self.app(scope, receive, send)
            return
        self.shed_total += 1
        retry = self._retry_after
        if retry is None:
            retry = sup.settings.monitoring_interval
        response = JSONResponse(
            {
                "detail": f"service overloaded (memory pressure {sup.level.name}); retry later",
                "level": sup.level.name,
            },
            status_code=503,
            headers={"Retry-After": str(max(1, math.ceil(retry)))},
        )
        await response(scope, receive, send)

    def _is_exempt(self, scope: Scope) -> bool:
        path = app_path(scope)
        return is_exempt(path, self._exempt) or _route_is_marked(scope, path)


def _route_is_marked(scope: Scope, path: str) -> bool:
    """
    Whether *path* (inside the app) is that of a route whose endpoint is marked
    exempt. Matched as the router matches it: unresolved, so ``/ready/../work`` is
    not ``/ready``.
    """
    routes = getattr(scope.get("app"), "routes", ())
    return any(pattern.match(path) for pattern in _marked_patterns(routes, ""))


def _marked_patterns(routes: Iterable[object], prefix: str) -> list[re.Pattern[str]]:
    """
    Path patterns of the marked endpoints among *routes*, through included routers.

    Only walked while shedding. Routes are found by their public shape: a ``path``
    and an ``endpoint`` (Starlette ``Route``, FastAPI ``APIRoute``), a ``Mount``
    with sub-``routes``, or a FastAPI included router (``original_router`` plus the
    include prefix, FastAPI 0.16x and later).
    """
    from starlette.routing import Mount, compile_path

    patterns: list[re.Pattern[str]] = []
    for route in routes:
        path = getattr(route, "path", None)
        endpoint = getattr(route, "endpoint", None)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            inner_prefix = str(getattr(context, "prefix", "") or "")
            patterns.extend(_marked_patterns(getattr(inner, "routes", ()), prefix + inner_prefix))
        elif isinstance(route, Mount):
            patterns.extend(_marked_patterns(route.routes, prefix + route.path))
        elif isinstance(path, str) and getattr(endpoint, _EXEMPT_ATTR, False):
            patterns.append(compile_path(prefix + path)[0])
    return patterns
