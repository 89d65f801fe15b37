"""
The CPU-bound FastAPI service the admission benchmark drives (uvicorn factories).

Covers: :func:`bare_app` (no limiter), :func:`static_app` (a fixed concurrency
limit: ``AdmissionMiddleware`` with a limiter pinned at ``ADMISSION_BENCH_STATIC``
slots and as many queued) and :func:`adaptive_app` (``supervised_lifespan`` with
``AdmissionMiddleware`` on ``sup.admission``, default ``admission:`` settings).
Does not cover: driving load (:mod:`benchmarks.admission`).

``GET /work`` burns ``ADMISSION_BENCH_WORK_MS`` of CPU on the event loop in
``ADMISSION_BENCH_SLICES`` slices with an ``await`` between them, standing in for a
handler that parses, scores and renders between awaits: concurrent requests share
the one core, so each one's latency grows with the number in flight. The slices
are measured in CPU time of the thread (not wall time), so a request costs the
same CPU however little of it the process gets: a slower share means a lower
capacity, as for a real handler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ("adaptive_app", "bare_app", "burn_cpu", "static_app")


def burn_cpu(seconds: float) -> None:
    """Keep the CPU busy until this thread has used *seconds* of CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _routes(app: FastAPI) -> None:
    work_s = float(os.environ.get("ADMISSION_BENCH_WORK_MS", "10")) / 1e3
    slices = int(os.environ.get("ADMISSION_BENCH_SLICES", "5"))

    @app.get("/work")
    async def work() -> dict[str, bool]:
        for _ in range(slices):
            burn_cpu(work_s / slices)
            await asyncio.sleep(0)
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}


def bare_app() -> FastAPI:
    """Return the service without any limit."""
    from fastapi import FastAPI

    app = FastAPI()
    _routes(app)
    return app


def static_app() -> FastAPI:
    """Return the service behind a fixed concurrency limit with a queue as deep."""
    from fastapi import FastAPI

    from resource_supervisor import AdmissionLimiter
    from resource_supervisor._admission._limit import LimitParams
    from resource_supervisor.integrations.fastapi import AdmissionMiddleware

    slots = int(os.environ.get("ADMISSION_BENCH_STATIC", "4"))
    limiter = AdmissionLimiter(
        LimitParams(min_limit=slots, max_limit=slots, initial_limit=slots, probe_interval=None),
        queue_limit=slots,
        queue_timeout=None,
    )
    app = FastAPI()
    app.add_middleware(AdmissionMiddleware, limiter=limiter)
    _routes(app)
    return app


def adaptive_app() -> FastAPI:
    """Return the service behind the supervisor's adaptive limiter (default settings)."""
    from fastapi import FastAPI

    from resource_supervisor import Supervisor, SupervisorSettings
    from resource_supervisor.integrations.fastapi import (
        AdmissionMiddleware,
        LoadSheddingMiddleware,
        supervised_lifespan,
    )

    settings = SupervisorSettings(monitoring_interval=1.0)
    app = FastAPI(lifespan=supervised_lifespan(settings))
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(LoadSheddingMiddleware)
    _routes(app)

    @app.get("/health/admission")
    async def admission() -> dict[str, object]:
        sup = Supervisor.current()
        return dataclasses.asdict(sup.admission.statistics())

    return app
