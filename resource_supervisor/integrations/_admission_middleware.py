"""
HTTP admission control: the adaptive limiter as ASGI middleware.

Covers: :class:`AdmissionMiddleware`, which runs each HTTP request inside a slot
of an :class:`~resource_supervisor.AdmissionLimiter` (the supervisor's
``sup.admission`` by default) and answers 503 or 429 with ``Retry-After`` when
the limiter refuses it. Re-exported by
:mod:`resource_supervisor.integrations.fastapi`. Does not cover: the limit
itself (:mod:`resource_supervisor._admission`), memory load shedding
(:class:`~resource_supervisor.integrations.fastapi.LoadSheddingMiddleware`) or
which paths are exempt (:mod:`resource_supervisor.integrations._paths`, shared
with shedding).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from starlette.responses import JSONResponse

from .._exceptions import AdmissionRejectedError, SupervisorClosedError
from ._paths import app_path, exempt_prefix, is_exempt

if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Collection, Iterable, Sequence

    from starlette.types import ASGIApp, Receive, Scope, Send

    from .._admission._limiter import AdmissionLimiter
    from .._supervisor import Supervisor

__all__ = ("AdmissionMiddleware",)


class AdmissionMiddleware:
    """
    ASGI middleware that admits HTTP requests under the adaptive concurrency limit.

    A request beyond the limit waits in the limiter's bounded queue; when the
    queue is full (or it waited past the queue timeout) it is answered at once
    with *status_code* and a ``Retry-After`` of the seconds the current backlog
    needs to drain at the measured completion rate (rounded up, at least 1). The
    time the app takes for an admitted request, body included, is the latency the
    limit follows.

    Exempt, as in load shedding: paths equal to or below an entry of
    *exempt_paths* (health probes and ``/metrics`` by default), endpoints marked
    with :func:`~resource_supervisor.integrations.fastapi.exempt_from_shedding`
    (every route of ``create_router`` is), and non-HTTP traffic. Without a
    limiter (no *limiter* given and no supervisor running) every request passes.

    Add it inside the load-shedding middleware, so that memory shedding answers
    before a request takes a slot::

        app.add_middleware(AdmissionMiddleware)
        app.add_middleware(LoadSheddingMiddleware)  # added last = runs first

    Args:
        app: The ASGI app to wrap.
        exempt_paths: Path prefixes never limited; ``None`` = the shedding defaults.
        status_code: 503 or 429; ``None`` = the supervisor's
            ``admission.reject_status`` (503 without a supervisor).
        limiter: The limiter to use; ``None`` = the app's supervisor's ``admission``.
        supervisor: The supervisor whose limiter to use; ``None`` finds the app's.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        exempt_paths: Collection[str] | None = None,
        status_code: Literal[429, 503] | None = None,
        limiter: AdmissionLimiter | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        # Imported here: _shedding needs fastapi, which this module does not.
        from ._app_supervisor import find_supervisor as _find_supervisor
        from ._shedding import DEFAULT_EXEMPT_PATHS
        from ._shedding import marked_patterns as _marked_patterns

        if status_code not in (None, 429, 503):
            raise ValueError(f"status_code must be 429 or 503, got {status_code!r}")
        self.app = app
        paths = DEFAULT_EXEMPT_PATHS if exempt_paths is None else exempt_paths
        self._exempt = tuple(exempt_prefix(path) for path in paths)
        self._status = status_code
        self._limiter = limiter
        self._supervisor = supervisor
        self._find_supervisor: Callable[[Scope], Supervisor | None] = _find_supervisor
        self._marked_patterns: Callable[[Iterable[object], str], list[re.Pattern[str]]] = (
            _marked_patterns
        )
        # The marked routes' patterns, walked once per routes list (and again when it
        # grows): walking and compiling them per request cost more than the limiter.
        self._marked: tuple[object, int, tuple[re.Pattern[str], ...]] = (None, -1, ())
        self.rejected_total = 0
        """Requests refused so far."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """
        Handle one ASGI call: run it in a slot, or refuse it.

        Cancellation:
            A request cancelled while queued leaves the queue without running; one
            cancelled while running releases its slot and is not counted as a
            latency sample. A refused request does no work to undo.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sup = self._supervisor if self._supervisor is not None else self._find_supervisor(scope)
        limiter = self._limiter
        if limiter is None and sup is not None:
            limiter = sup.admission
        if limiter is None or self._is_exempt(scope):
            await self.app(scope, receive, send)
            return
        admitted = False
        try:
            async with limiter.slot():
                admitted = True
                await self.app(scope, receive, send)
        except AdmissionRejectedError as exc:
            if admitted:
                raise  # the app's own
            rejection = exc
        except SupervisorClosedError:
            if admitted:
                raise
            # shutting down: the server drains; let the request through
            await self.app(scope, receive, send)
            return
        else:
            return
        self.rejected_total += 1
        status = self._status
        if status is None:
            status = sup.settings.admission.reject_status if sup is not None else 503
        response = JSONResponse(
            {
                "detail": "service at its concurrency limit; retry later",
                "limit": rejection.limit,
                "in_flight": rejection.in_flight,
                "queued": rejection.queued,
            },
            status_code=status,
            headers={"Retry-After": str(max(1, math.ceil(rejection.retry_after)))},
        )
        await response(scope, receive, send)

    def _is_exempt(self, scope: Scope) -> bool:
        path = app_path(scope)
        if is_exempt(path, self._exempt):
            return True
        # Matched as the router matches: unresolved, so /ready/../work is not /ready.
        return any(pattern.match(path) for pattern in self._marked_for(scope))

    def _marked_for(self, scope: Scope) -> tuple[re.Pattern[str], ...]:
        routes: Sequence[object] = getattr(scope.get("app"), "routes", ())
        known, count, patterns = self._marked
        if known is not routes or count != len(routes):
            patterns = tuple(self._marked_patterns(routes, ""))
            self._marked = (routes, len(routes), patterns)
        return patterns
