"""
The Dask distributed backend of the process lane (``concurrency.backend: dask``).

Covers: :class:`DaskLane`, a :class:`~._backend.ProcessBackend` that runs calls
and map chunks as Dask tasks, with the local lane's contract: at most once by
default (a worker that dies fails only the call it was running, with
:class:`WorkerCrashedError`), remote exceptions keep their type, unpicklable input
fails before anything is submitted, in-flight work is bounded by the cluster's
thread count, and at CRITICAL pressure calls beyond ``queue_limit`` are refused
(:class:`OverloadedError`).

The lane itself holds its lifecycle, admission, ``run``, ``map`` and metrics;
running one call as one Dask task (its slot, outcome, cancellation and timeout)
is :mod:`._tasks`, and polling the cluster (its figures, level and the lane's
cap) is :mod:`._polling`. Does not cover: starting or connecting to the cluster
(:mod:`._cluster`), grading the cluster's pressure (:mod:`._pressure`), forming
and windowing a map's chunks (:mod:`.._mapping`, shared with the local lane), or
the local lane (:mod:`.._local._lane`).

Delivery: with ``dask.retries = 0`` (the default) an owned cluster's scheduler
fails a task at the first worker death, and the lane never has more calls in
flight than the cluster has threads, so no call waits on a worker behind another
one: *at most once*. ``dask.retries = N`` lets Dask re-run a task whose worker
died up to N times, on other workers: *at least once*, so functions must be
idempotent. When the lane connects to a scheduler whose ``allowed-failures`` is
above 0 (or cannot be read) it reports ``at-least-once`` and warns once. Dask
itself makes no exactly-once promise (results lost with a worker before they were
fetched are recomputed), which is why every result is fetched and released at once.

Cancellation: a cancelled caller cancels its Dask future (shielded). A call that
has already started on a worker cannot be interrupted: it runs to the end there
and its result is dropped; its worker thread is busy meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, TypeVar

import anyio

from ..._exceptions import OverloadedError, SupervisorClosedError
from ..._lifecycle import AsyncClosable
from ..._snapshot import PressureLevel
from .._mapping import map_chunked
from .._pickling import check_picklable
from ._cluster import ClusterHandle, close_cluster, open_cluster
from ._draining import Drains
from ._polling import ClusterPolling, worker_thresholds
from ._pressure import ClusterReading, ClusterThresholds
from ._tasks import DaskTasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping

    from ..._config import ConcurrencySettings
    from ..._snapshot import MetricValue

__all__ = ("DaskLane",)

T = TypeVar("T")
R = TypeVar("R")


class DaskLane(DaskTasks, ClusterPolling, AsyncClosable):
    """
    The process lane on a Dask cluster: an owned ``LocalCluster`` on 127.0.0.1, or an
    existing scheduler (``dask.address`` / ``dask.scheduler_file``) that it never closes.

    Use as an async context manager: entering starts (or connects to) the cluster and
    the pressure poller; leaving closes them. Needs an asyncio event loop.
    """

    name = "dask"

    def __init__(
        self,
        settings: ConcurrencySettings,
        *,
        max_workers: int,
        memory_limit_bytes: int | None = None,
    ) -> None:
        """
        Prepare the lane; nothing starts until ``async with``.

        Args:
            settings: The broker's settings; ``settings.dask`` configures the cluster.
            max_workers: Worker processes of an owned cluster when
                ``dask.n_workers`` is ``"auto"``.
            memory_limit_bytes: Limit per owned worker when
                ``dask.memory_limit_bytes`` is unset (``None``: Dask splits memory).
        """
        self._settings = settings
        dask_settings = settings.dask
        self._n_workers = (
            max_workers if dask_settings.n_workers == "auto" else dask_settings.n_workers
        )
        self._memory_limit = dask_settings.memory_limit_bytes or memory_limit_bytes
        self._handle: ClusterHandle | None = None
        self._closed = False
        self._limiter = anyio.CapacityLimiter(max(1, self._n_workers))
        self._thresholds = ClusterThresholds()
        self._reading = ClusterReading()
        self._cluster_level = PressureLevel.NORMAL
        self._local_level = PressureLevel.NORMAL
        self._at_least_once = dask_settings.retries > 0
        self._poller: asyncio.Task[None] | None = None
        self._drains = Drains()
        self._workers: tuple[str, ...] = ()  # addresses, from the last poll
        self._waiting = 0
        self._completed = 0
        self._failed = 0
        self._crashed = 0
        self._refused = 0

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> DaskLane:
        """
        Start the owned cluster (or connect) and the pressure poller.

        Returns:
            The lane.

        Raises:
            ConfigError: If the configured scheduler cannot be reached or read.
            SupervisorClosedError: If the lane was closed before.

        Cancellation:
            Checked throughout start-up; a half-started cluster is closed, shielded.
        """
        if self._closed or self._handle is not None:
            raise SupervisorClosedError("dask process lane")
        self._thresholds = worker_thresholds()
        handle = await open_cluster(
            self._settings.dask, n_workers=self._n_workers, memory_limit_bytes=self._memory_limit
        )
        self._handle = handle
        try:
            await self._poll_once(first=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())
        return self

    async def aclose(self) -> None:
        """
        Stop the poller, close the client and an owned cluster; leave a connected one.

        Idempotent, and it always closes, even when cancelled or when Dask's own close
        fails (an owned cluster that does not close within ``close_timeout`` is marked
        closed and abandoned; its worker processes are gone by then). Later calls raise
        :class:`SupervisorClosedError`; calls still in flight fail with
        :class:`ClusterConnectionLostError` as the client goes away.

        Cancellation:
            Shielded: closing always completes.
        """
        self._closed = True
        poller, self._poller = self._poller, None
        handle, self._handle = self._handle, None
        with anyio.CancelScope(shield=True):
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await self._drains.aclose()
            if handle is not None:
                await close_cluster(handle, close_seconds=self._settings.dask.close_timeout)

    # -- pressure ----------------------------------------------------------------
    def set_pressure(self, level: PressureLevel) -> None:
        """
        Set the supervisor's own level; admission uses the worse of it and the cluster's.

        Args:
            level: The supervisor's current level.
        """
        self._local_level = PressureLevel(level)

    def cluster_level(self) -> PressureLevel:
        """
        The cluster's own level from the last poll (see :mod:`._pressure`).

        Returns:
            NORMAL, WARNING or CRITICAL.
        """
        return self._cluster_level

    def _level(self) -> PressureLevel:
        return max(self._local_level, self._cluster_level)

    # -- calls -------------------------------------------------------------------
    def _client(self) -> object:
        if self._closed or self._handle is None:
            raise SupervisorClosedError("dask process lane")
        return self._handle.client

    def _admit(self) -> None:
        """Refuse at CRITICAL when no slot is free and ``queue_limit`` calls wait."""
        level = self._level()
        limit = self._settings.queue_limit
        if (
            level >= PressureLevel.CRITICAL
            and self._limiter.available_tokens < 1
            and self._waiting >= limit
        ):
            self._refused += 1
            raise OverloadedError("process", self._waiting, limit, level.name)

    async def run(
        self,
        func: Callable[..., T],
        args: tuple[object, ...],
        *,
        timeout: float | None,  # noqa: ASYNC109 - the ProcessBackend contract
    ) -> T:
        """
        Run ``func(*args)`` as one Dask task and return its result.

        Args:
            func: A picklable (stdlib :mod:`pickle`) callable, importable on the workers.
            args: Its positional arguments, picklable.
            timeout: Seconds before the call is given up (``None`` = no limit).

        Returns:
            What *func* returned; its exception propagates with its own type.

        Raises:
            UnpicklableError: If *func* or an argument cannot be pickled (nothing is
                submitted).
            OverloadedError: At CRITICAL pressure when no slot is free and
                ``queue_limit`` calls already wait.
            WorkerCrashedError: If the worker running it died (the call ran once, or,
                with retries, the last of N + 1 attempts died).
            ClusterConnectionLostError: If the scheduler connection went away; the
                call may or may not have run.
            CallTimeoutError: If *timeout* expired; the Dask task is cancelled. On an
                owned cluster a started call is stopped by killing its worker process
                (its nanny starts a new one); on a connected cluster it runs to its end,
                holding its slot as a cancelled running call does.
            SupervisorClosedError: If the lane is not entered or already closed.

        Cancellation:
            Checked before a slot is taken (the lane is then unchanged). While waiting
            for the result, cancellation cancels the Dask future (shielded): a queued
            task never runs and its slot is released at once; a running one finishes on
            its worker, its result is dropped, and its slot stays taken until it ends
            (new calls go to the other workers meanwhile; see :mod:`._draining`).
        """
        check_picklable(func, args)
        return await self._submit_and_wait(func, args, timeout)

    async def _run_chunk(self, func: Callable[..., object], args: tuple[object, ...]) -> object:
        """The ``run`` of :func:`.._mapping.map_chunked`: one chunk, one Dask task."""
        check_picklable(func, args)  # stdlib pickle: refuse what the local lane refuses
        return await self._submit_and_wait(func, args, None)

    def map(
        self,
        func: Callable[[T], R],
        items: Iterable[T] | AsyncIterable[T],
        *,
        ordered: bool,
        chunksize: int | None,
        max_in_flight: int | None,
    ) -> AsyncIterator[R]:
        """
        Lazily map *func* over *items*, one Dask task per chunk, in a sliding window.

        Items are read only as window slots free up (never ``client.map`` over the
        whole input); automatic chunks start at one item and grow (at most 8x per
        chunk) until one takes about ``dask.target_chunk_seconds`` on its worker (the
        per-task cost is a few milliseconds), and near the end of an input of known length
        shrink so the workers finish together (:func:`.._mapping.balanced_chunksize`).
        Each chunk is admitted like a :meth:`run` call; its results are fetched and
        released at once.

        Args:
            func: A picklable one-argument callable, importable on the workers.
            items: The inputs, sync or async iterable.
            ordered: Yield in input order (else as chunks complete).
            chunksize: Fixed items per chunk (``None``: grow to the target duration).
            max_in_flight: Chunks formed and not yet consumed (``None``: twice the
                cluster's threads). At most the cluster's threads of them are submitted
                to Dask at once; the others wait for a slot on this side, so a worker
                death still fails only the chunk it was running, and an ordered map
                keeps every worker busy while it waits for its oldest chunk.

        Returns:
            An async iterator of results; ``aclose()`` it (or exhaust it) to cancel the
            rest. The first error (a remote exception, :class:`WorkerCrashedError` for
            the whole chunk, :class:`UnpicklableError`) is raised bare.

        Raises:
            SupervisorClosedError: If the lane is not entered or already closed.
        """
        self._client()
        threads = max(1, int(self._limiter.total_tokens))
        return map_chunked(
            self._run_chunk,
            func,
            items,
            ordered=ordered,
            chunksize=chunksize,
            max_in_flight=max_in_flight or 2 * threads,
            target_chunk_seconds=self._settings.dask.target_chunk_seconds,
            first_chunksize=1,
            workers=threads,
        )

    # -- metrics -----------------------------------------------------------------
    def metrics(self) -> Mapping[str, MetricValue]:
        """
        Flat metrics: the lane's counters and the cluster's last poll; never blocks.

        Returns:
            ``process_lane_backend``, ``process_lane_delivery``, the ``dask_*`` cluster
            figures and the ``process_*`` counters shared with the local lane.
        """
        reading = self._reading
        in_flight = int(self._limiter.borrowed_tokens)
        return {
            "process_lane_backend": "dask",
            "process_lane_delivery": "at-least-once" if self._at_least_once else "at-most-once",
            "dask_workers": reading.workers,
            "dask_threads": reading.threads,
            "dask_workers_paused": reading.paused,
            "dask_memory_used_bytes": reading.memory_used_bytes,
            "dask_memory_limit_bytes": reading.memory_limit_bytes,
            "dask_worst_worker_memory_ratio": reading.worst_memory_ratio,
            "dask_queue_depth": reading.queue_depth,
            "dask_pressure_level": int(self._cluster_level),
            "process_queue_depth": self._waiting,
            "process_in_flight": in_flight,
            "process_completed_total": self._completed,
            "process_failed_total": self._failed,
            "process_crashed_total": self._crashed,
            "process_refused_total": self._refused,
            "process_workers_live": reading.workers,
            "process_workers_target": self._n_workers if self._handle_owned() else reading.workers,
        }

    def _handle_owned(self) -> bool:
        return self._handle is not None and self._handle.owned
