"""
The app the ``event_streams`` benchmark floods (a uvicorn factory).

Covers: :func:`create`, a FastAPI app with ``supervised_lifespan`` sampling every
0.5 s and ``create_router(max_streams=RS_BENCH_MAX_STREAMS)``. Does not cover:
driving the clients (:mod:`benchmarks.event_streams`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ("create",)


def create() -> FastAPI:
    """Return the app; the stream cap comes from ``RS_BENCH_MAX_STREAMS``."""
    from fastapi import FastAPI

    from resource_supervisor._config import build_settings
    from resource_supervisor.integrations.fastapi import create_router, supervised_lifespan

    app = FastAPI(lifespan=supervised_lifespan(build_settings(monitoring_interval=0.5)))
    app.include_router(create_router(max_streams=int(os.environ["RS_BENCH_MAX_STREAMS"])))
    return app
