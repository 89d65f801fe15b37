"""
An owned Dask cluster whose scheduler runs in its own process
(``dask.scheduler_in_subprocess``), with the lane's credentials.

Covers: :func:`subprocess_cluster`, a ``SpecCluster`` of one scheduler and N nannies,
each started as ``python -m dask spec`` on 127.0.0.1, like distributed's experimental
``SubprocessCluster``, with two differences: every process gets the cluster's TLS
credentials and private config through its environment
(:func:`._security.subprocess_environment`; ``SubprocessCluster`` can pass only
JSON on the command line, which every local user can read), and the scheduler file
lives in a private temporary directory that closing removes. The scheduler's stderr
is the service's, as the workers' is (a pipe nobody reads would fill up and stall the
scheduler after enough log lines).

Does not cover: the in-process ``LocalCluster`` or the client (:mod:`._cluster`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from distributed.deploy.spec import SpecCluster
from distributed.deploy.subprocess import Subprocess

if TYPE_CHECKING:
    from collections.abc import Mapping

    from distributed.security import Security

__all__ = ("subprocess_cluster",)


def _spec_command(*args: str, spec: Mapping[str, object]) -> list[str]:
    return [sys.executable, "-m", "dask", "spec", *args, "--spec", json.dumps(spec)]


class _Scheduler(Subprocess):
    """
    The scheduler as a ``dask spec`` subprocess; its address read from its file. The
    file's private directory is made, read and removed off the event loop.
    """

    def __init__(
        self, scheduler_kwargs: dict[str, object], env: dict[str, str], timeout: float
    ) -> None:
        self._directory: str | None = None
        self._kwargs = scheduler_kwargs
        self.env = env
        self.timeout = timeout
        self.address: str | None = None
        super().__init__()  # type: ignore[no-untyped-call]

    async def _start(self) -> None:
        self._directory = await anyio.to_thread.run_sync(
            functools.partial(tempfile.mkdtemp, prefix="resource-supervisor-dask-")  # mode 0700
        )
        file = anyio.Path(self._directory) / "scheduler.json"
        opts = {**self._kwargs, "scheduler_file": str(file)}
        spec = {"cls": "distributed.Scheduler", "opts": opts}
        self.process = await asyncio.create_subprocess_exec(*_spec_command(spec=spec), env=self.env)
        with anyio.fail_after(self.timeout):
            while self.process.returncode is None:
                try:
                    self.address = json.loads(await file.read_text(encoding="utf-8"))["address"]
                except (OSError, ValueError, KeyError):
                    await anyio.sleep(0.05)  # not written yet, or not completely
                else:
                    return
        raise RuntimeError(
            f"the Dask scheduler exited with code {self.process.returncode} on start "
            "(its error is on this process's stderr)"
        )

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._directory is not None:
                remove = functools.partial(shutil.rmtree, self._directory, ignore_errors=True)
                with anyio.CancelScope(shield=True):  # a small directory: removed in any case
                    await anyio.to_thread.run_sync(remove)


class _Worker(Subprocess):
    """One nanny (and its worker) as a ``dask spec`` subprocess."""

    def __init__(
        self, scheduler: str, name: object, worker_kwargs: dict[str, object], env: dict[str, str]
    ) -> None:
        self.scheduler = scheduler
        self.name = name
        self.worker_kwargs = worker_kwargs
        self.env = env
        super().__init__()  # type: ignore[no-untyped-call]

    async def _start(self) -> None:
        spec = {"cls": "distributed.Nanny", "opts": {**self.worker_kwargs, "name": self.name}}
        self.process = await asyncio.create_subprocess_exec(
            *_spec_command(self.scheduler, spec=spec), env=self.env
        )


def subprocess_cluster(
    *,
    security: Security | None,
    environment: Mapping[str, str],
    scheduler_kwargs: Mapping[str, object],
    n_workers: int,
    memory_limit: int | str,
    silence_logs: int,
    timeout: float,
) -> SpecCluster:
    """
    A cluster (not yet started: await it) of a subprocess scheduler and *n_workers*
    subprocess nannies with one thread each, all on 127.0.0.1.

    Args:
        security: The cluster's credentials (``None``: plain tcp).
        environment: ``DASK_*`` variables for every process of the cluster, on top of
            this process's environment.
        scheduler_kwargs: Keywords of ``distributed.Scheduler`` (JSON-compatible).
        n_workers: Nanny processes.
        memory_limit: Per worker, bytes or ``"auto"``.
        silence_logs: Log level of the workers.
        timeout: Seconds the scheduler may take to write its address.

    Returns:
        The ``SpecCluster``; closing it kills every process and removes the scheduler
        file.
    """
    # The scheduler logs to the service's stderr: only what the workers would log.
    level = logging.getLevelName(silence_logs).lower()
    env = {**os.environ, **environment, "DASK_LOGGING__DISTRIBUTED": level}
    scheduler = {
        "cls": _Scheduler,
        "options": {
            "scheduler_kwargs": {
                "host": "127.0.0.1",
                "port": 0,
                "dashboard": False,
                "protocol": "tls" if security is not None else "tcp",
                **scheduler_kwargs,
            },
            "env": env,
            "timeout": timeout,
        },
    }
    worker_kwargs: dict[str, object] = {
        "host": "127.0.0.1",
        "nthreads": 1,
        "memory_limit": memory_limit,
        "silence_logs": silence_logs,
    }
    # SpecCluster adds each worker's name (its key in the spec) to the options.
    worker = {"cls": _Worker, "options": {"worker_kwargs": worker_kwargs, "env": env}}
    return SpecCluster(  # type: ignore[no-untyped-call]
        workers=dict.fromkeys(range(n_workers), worker),
        scheduler=scheduler,
        worker=worker,
        name="SubprocessCluster",
        silence_logs=silence_logs,
        security=security,
        asynchronous=True,
    )
