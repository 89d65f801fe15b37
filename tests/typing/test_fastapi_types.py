"""
Type-only checks of the FastAPI integration (mypy, never run).

A standard FastAPI or Starlette lifespan, stateless or yielding its state, passes
as ``supervised_lifespan(inner=...)`` and the result as ``FastAPI(lifespan=...)``
and ``Starlette(lifespan=...)`` without casts. Calls that must be rejected carry
``# type: ignore[code]``; strict mode's ``warn_unused_ignores`` proves the rejection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from starlette.applications import Starlette

from resource_supervisor.integrations.fastapi import supervised_lifespan


@asynccontextmanager
async def fastapi_lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.ready = True
    yield


@asynccontextmanager
async def fastapi_stateful(app: FastAPI) -> AsyncIterator[dict[str, object]]:
    yield {"db": app.title}


class State(TypedDict):
    db: str


@asynccontextmanager
async def starlette_typed_state(app: Starlette) -> AsyncIterator[State]:
    yield {"db": "connected"}


@asynccontextmanager
async def any_app(app: object) -> AsyncIterator[None]:
    yield


def standard_lifespans() -> None:
    FastAPI(lifespan=supervised_lifespan(inner=fastapi_lifespan))
    FastAPI(lifespan=supervised_lifespan(inner=fastapi_stateful))
    FastAPI(lifespan=supervised_lifespan(inner=any_app))
    FastAPI(lifespan=supervised_lifespan())
    Starlette(lifespan=supervised_lifespan(inner=starlette_typed_state))
    Starlette(lifespan=supervised_lifespan(inner=any_app))
    Starlette(lifespan=supervised_lifespan())
    lifespan = supervised_lifespan(inner=fastapi_lifespan)
    FastAPI(lifespan=lifespan)


def rejected() -> None:
    # A FastAPI lifespan cannot run a Starlette app that is not a FastAPI.
    Starlette(lifespan=supervised_lifespan(inner=fastapi_lifespan))  # type: ignore[arg-type]
    # Not a lifespan: a plain function.
    supervised_lifespan(inner=lambda app: None)  # type: ignore[arg-type, return-value]
