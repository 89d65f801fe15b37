"""
The small FastAPI service the load test drives, in three variants (uvicorn factories).

Covers: :func:`plain_app` (no supervisor: blocking work via ``anyio.to_thread``),
:func:`supervised_app` (``supervised_lifespan`` + ``LoadSheddingMiddleware``, work via
the supervisor's thread lane) and :func:`critical_app` (the same with memory pinned
at 95% by a ``ScriptedSource``, so the middleware sheds). Does not cover: driving
load (:mod:`benchmarks.loadtest`). Each request spins 1 ms and touches 256 KiB,
standing in for a retrieval step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread

from ._work import spin

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ("critical_app", "plain_app", "supervised_app")


def _work() -> int:
    block = bytearray(256 * 1024)
    spin(0.001)
    return len(block)


def plain_app() -> FastAPI:
    """Return the service without a supervisor."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/work")
    async def work() -> dict[str, int]:
        return {"bytes": await anyio.to_thread.run_sync(_work)}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _supervised(*, critical: bool) -> FastAPI:
    from fastapi import FastAPI

    from resource_supervisor._config import SupervisorSettings
    from resource_supervisor._supervisor import Supervisor
    from resource_supervisor.integrations.fastapi import (
        LoadSheddingMiddleware,
        supervised_lifespan,
    )
    from resource_supervisor.testing import ScriptedSource

    def factory(settings: SupervisorSettings) -> Supervisor:
        if not critical:
            return Supervisor(settings)
        source = ScriptedSource()
        source.set(memory_percent=95.0)
        return Supervisor(settings, source=source)

    settings = SupervisorSettings(monitoring_interval=1.0, cleanup_cooldown=3600.0)
    app = FastAPI(lifespan=supervised_lifespan(settings, supervisor_factory=factory))
    app.add_middleware(LoadSheddingMiddleware)

    @app.get("/work")
    async def work() -> dict[str, int]:
        return {"bytes": await Supervisor.current().executors.run_in_thread(_work)}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def supervised_app() -> FastAPI:
    """Return the service under a supervisor with load shedding (NORMAL pressure)."""
    return _supervised(critical=False)


def critical_app() -> FastAPI:
    """Return the supervised service with memory pinned at CRITICAL (it sheds)."""
    return _supervised(critical=True)
