"""
The app's supervisor: run it for the app's lifetime and find it from a request.

Covers: :func:`supervised_lifespan` (a :class:`Supervisor` entered before the app's own
lifespan and left after it, stored in the lifespan state and on ``app.state``),
:func:`find_supervisor` (lifespan state, then app state, then
:meth:`Supervisor.current`) and :func:`get_supervisor` (the FastAPI dependency). Does
not cover: the routes (:mod:`.fastapi`) or the middlewares (:mod:`._shedding`,
:mod:`._admission_middleware`), which find the supervisor through here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final, TypeVar, overload

import anyio.to_thread
from fastapi import HTTPException, Request

from .._config import load_settings
from .._exceptions import NoSupervisorError, SupervisorClosedError
from .._supervisor import Supervisor

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Callable, Mapping
    from contextlib import AbstractAsyncContextManager

    from .._config import SupervisorSettings

__all__ = ("STATE_KEY", "find_supervisor", "get_supervisor", "supervised_lifespan")

AppT = TypeVar("AppT")

STATE_KEY: Final = "supervisor"
"""Name of the supervisor in the lifespan state and on ``app.state``."""


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
        # the file is read off the event loop, which may already serve other apps
        resolved = (
            settings
            if settings is not None
            else await anyio.to_thread.run_sync(load_settings, config_path)
        )
        async with supervisor_factory(resolved) as sup:
            state = getattr(app, "state", None)
            if state is not None:
                state.supervisor = sup
            try:
                if inner is None:
                    yield {STATE_KEY: sup}
                else:
                    async with inner(app) as inner_state:
                        yield {**(inner_state or {}), STATE_KEY: sup}
            finally:
                if state is not None and getattr(state, STATE_KEY, None) is sup:
                    delattr(state, STATE_KEY)

    return lifespan


def find_supervisor(scope: Mapping[str, object]) -> Supervisor | None:
    """The supervisor for a request: lifespan state, then app state, then current()."""
    state = scope.get("state")
    if isinstance(state, dict):
        found = state.get(STATE_KEY)
        if isinstance(found, Supervisor):
            return found
    app = scope.get("app")
    found = getattr(getattr(app, "state", None), STATE_KEY, None)
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
    sup = find_supervisor(request.scope)
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
