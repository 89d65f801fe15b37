"""
The app that the multi-worker tests serve with ``uvicorn --workers 2`` and gunicorn.

Settings come from the environment (the tests set the shared directory and turn
multi-process mode on); ``/cpu`` runs a 0.3 s CPU call on the process lane and
``/pid`` answers the server process's pid.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from resource_supervisor import Supervisor
from resource_supervisor.integrations.fastapi import create_router, supervised_lifespan
from tests._workers import spin

app = FastAPI(lifespan=supervised_lifespan())
app.include_router(create_router())


@app.get("/pid")
async def pid() -> dict[str, int]:
    """This server process's pid."""
    return {"pid": os.getpid()}


@app.get("/cpu")
async def cpu() -> dict[str, int]:
    """Run one CPU call on the process lane; answer the server process's pid."""
    await Supervisor.current().executors.run_in_process(spin, 0.3)
    return {"pid": os.getpid()}
