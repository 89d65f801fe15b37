"""
Load shedding at CRITICAL: :class:`LoadSheddingMiddleware` answers 503 with
``Retry-After``, except on exempt paths and marked endpoints.

Covers: :data:`DEFAULT_EXEMPT_PATHS`, :func:`exempt_from_shedding` (the mark),
:class:`LoadSheddingMiddleware`, and :func:`route_is_marked` (whether a path is a marked
route's, as the router matches it; the admission middleware uses it too). Does not
cover: how a path is resolved and compared (:mod:`._paths`) or adaptive admission
(:mod:`._admission_middleware`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, TypeVar

from fastapi.responses import JSONResponse

from .._snapshot import PressureLevel
from ._app_supervisor import find_supervisor
from ._paths import app_path, exempt_prefix, is_exempt

if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Collection, Iterable

    from starlette.types import ASGIApp, Receive, Scope, Send

    from .._supervisor import Supervisor

__all__ = (
    "DEFAULT_EXEMPT_PATHS",
    "EXEMPT_ATTR",
    "LoadSheddingMiddleware",
    "exempt_from_shedding",
    "route_is_marked",
)

F = TypeVar("F", bound="Callable[..., object]")

EXEMPT_ATTR: Final = "__resource_supervisor_exempt__"
"""Attribute :func:`exempt_from_shedding` sets on an endpoint."""

DEFAULT_EXEMPT_PATHS: Final = (
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
)
"""Paths (and everything below them) that are never shed by default."""


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
    setattr(endpoint, EXEMPT_ATTR, True)
    return endpoint


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
        sup = self._supervisor if self._supervisor is not None else find_supervisor(scope)
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
        return is_exempt(path, self._exempt) or route_is_marked(scope, path)


def route_is_marked(scope: Scope, path: str) -> bool:
    """
    Whether *path* (inside the app) is that of a route whose endpoint is marked
    exempt. Matched as the router matches it: unresolved, so ``/ready/../work`` is
    not ``/ready``.
    """
    routes = getattr(scope.get("app"), "routes", ())
    return any(pattern.match(path) for pattern in marked_patterns(routes, ""))


def marked_patterns(routes: Iterable[object], prefix: str) -> list[re.Pattern[str]]:
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
            patterns.extend(marked_patterns(getattr(inner, "routes", ()), prefix + inner_prefix))
        elif isinstance(route, Mount):
            patterns.extend(marked_patterns(route.routes, prefix + route.path))
        elif isinstance(path, str) and getattr(endpoint, EXEMPT_ATTR, False):
            patterns.append(compile_path(prefix + path)[0])
    return patterns
