"""
The nested sections of the settings: ``concurrency`` (the executor broker),
``multiprocess`` (container-wide supervision) and ``admission`` (adaptive admission
control).

Covers: each section's fields, defaults, bounds and its own cross-field checks. Does
not cover: ``concurrency.dask`` (:mod:`._config_dask`), the top level
(:mod:`._config_model`), or what the settings mean at run time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ._config_base import Frozen, RelationError, auto_or_positive_int
from ._config_dask import DaskSettings
from ._limits import MAX_COUNT, Bytes, Count, Duration, Percent, Timeout, WorkerCap

__all__ = ("AdmissionSettings", "ConcurrencySettings", "MultiprocessSettings")


class ConcurrencySettings(Frozen):
    """
    The executor broker: thread lane (I/O) and process lane (CPU).
    """

    default_cpu_workers: int | Literal["auto"] = "auto"
    """Process workers; ``auto`` = usable CPUs (affinity and cgroup CPU quota)."""
    default_io_workers: int | Literal["auto"] = "auto"
    """Thread-lane threads; ``auto`` = ``min(32, usable CPUs + 4)`` as CPython's default."""
    max_total_workers: WorkerCap | None = None
    """Optional cap on lane threads plus worker processes together."""
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    """How worker processes start; forkserver is safe in a threaded asyncio process."""
    idle_timeout: Duration = 60.0
    """Seconds a worker process may sit idle before it is retired."""
    queue_limit: Count = 1000
    """Calls the process lane keeps queued at CRITICAL before refusing new ones."""
    max_tasks_per_worker: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    """Retire a worker process after this many calls (None = never)."""
    worker_max_rss_bytes: Bytes | None = None
    """Retire a worker process between calls once its RSS exceeds this."""
    worker_oom_score_adj: Annotated[int, Field(ge=-1000, le=1000)] | None = 500
    """``oom_score_adj`` each worker process sets for itself, so the kernel's OOM killer
    picks a worker before the service (None = leave the inherited value). Lowering it
    below the service's own value needs privileges."""
    default_thread_limiter_tokens: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    """Size of anyio's default thread limiter (FastAPI ``def`` endpoints, sync
    dependencies, ``run_in_threadpool``) while the supervisor runs; ``None`` = leave it
    (anyio's default is 40)."""
    govern_default_thread_limiter: bool = False
    """Shrink that limiter under pressure (half at WARNING, a quarter at CRITICAL, at
    least 1) and restore it when pressure clears."""
    serializer: Literal["pickle", "cloudpickle"] = "pickle"
    """How the local process lane sends functions: ``pickle`` (by reference: module-level
    functions only) or ``cloudpickle`` (by value: lambdas and functions defined in a
    notebook's ``__main__`` too; the ``cloudpickle`` extra, slower per call)."""
    prestart_process_lane: bool = False
    """Start the process lane (its forkserver and one worker) when the supervisor
    starts, so the first call does not pay for it; else it starts on first use."""
    container_cpu_workers: int | Literal["auto"] = "auto"
    """Lane workers of all supervised server processes of the container together
    (multi-process mode); ``auto`` = usable CPUs."""
    backend: Literal["local", "dask"] = "local"
    """Where the process lane runs: local worker processes or a Dask cluster."""
    dask: DaskSettings = DaskSettings()
    """Settings of the Dask backend (used when ``backend: dask``)."""

    _check_workers = field_validator(
        "default_cpu_workers", "default_io_workers", "container_cpu_workers", mode="before"
    )(auto_or_positive_int)


class MultiprocessSettings(Frozen):
    """
    Container-wide supervision of several server processes (``gunicorn -w N``,
    ``uvicorn --workers N``) through a shared directory.

    .. versionadded:: 0.2
    """

    enabled: bool | Literal["auto"] = "auto"
    """Join the container's shared directory; ``auto`` = when the parent process is a
    gunicorn master or a ``uvicorn --workers`` supervisor."""
    directory: str | None = None
    """The shared directory; ``None`` = ``/dev/shm/resource-supervisor-<uid>-<key>``,
    keyed by the memory cgroup. Created 0700; refused if it is open to other users."""
    worker_index: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    """This process's worker index in its server, exported as the ``worker`` label."""


class AdmissionSettings(Frozen):
    """
    Adaptive admission control (``sup.admission`` and ``AdmissionMiddleware``).

    .. versionadded:: 0.2
    """

    initial_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 20
    """Calls admitted at once before any latency is measured."""
    min_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1
    """The floor; CRITICAL memory pressure drops the limit here."""
    max_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1000
    """The ceiling."""
    queue_limit: Count = 32
    """Callers that may wait for a slot; beyond it they are refused at once."""
    queue_timeout: Timeout | Literal["auto"] | None = "auto"
    """Seconds a caller may wait; ``auto`` = twice the minimum latency times ``tolerance``.
    The queue turns LIFO once its oldest caller has waited a quarter of the minimum
    latency (or half of this); a queue standing this long refuses callers that waited
    over half the minimum latency."""
    tolerance: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    """How much slower than the minimum latency calls may get before the limit shrinks."""
    smoothing: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Weight of each window's target in the limit (lower = steadier, slower)."""
    window_samples: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 10
    """Completed calls per update of the limit."""
    long_window: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 20
    """Windows averaged by the long latency estimate."""
    probe_interval: Timeout | None = 10.0
    """Seconds between minimum-latency probes (limit pinned at min_limit for one window)."""
    cpu_saturation_percent: Percent | None = 95.0
    """Process CPU (percent of the usable CPUs) that tightens the limit (None = off)."""
    cpu_throttled_percent: Annotated[float, Field(gt=0, le=100)] | None = 5.0
    """Percent of cgroup quota periods throttled that tightens the limit (None = off)."""
    cpu_backoff: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    """Factor applied to the limit per sample while the CPU is saturated or throttled."""
    reject_status: Literal[429, 503] = 503
    """HTTP status the middleware answers when it refuses a request."""

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionSettings:
        if self.max_limit < self.min_limit:
            raise RelationError(
                [
                    (
                        "admission.max_limit",
                        self.max_limit,
                        f"must not be below min_limit ({self.min_limit})",
                    )
                ]
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise RelationError(
                [
                    (
                        "admission.initial_limit",
                        self.initial_limit,
                        "must lie between min_limit "
                        f"({self.min_limit}) and max_limit ({self.max_limit})",
                    )
                ]
            )
        return self
