"""
The executor broker's facade, ``sup.executors``: one object over both lanes.

Covers: :class:`Executors` (``run_in_thread``, ``run_in_process``,
``map_in_processes``, ``set_pressure``, ``metrics``, ``aclose``): building the
process backend named by the settings, entering and closing both lanes, and
forwarding calls to them. The standard-library executors it hands out
(``thread_executor``, ``process_executor``, ``set_default_executor``) are
:mod:`._std_handout`; :func:`split_worker_budget`, the pure rule that applies
``max_total_workers``, is :mod:`._worker_budget` (re-exported here). Does not
cover: how the lanes work (:mod:`._threads`; :mod:`._local._lane` for the local
process lane; :mod:`._dask._lane` for the distributed one, behind the
:class:`~._backend.ProcessBackend` seam), how the ``concurrent.futures`` executors
bridge threads to the loop (:mod:`._std_executors`), or resolving ``"auto"``
worker counts (the supervisor does that and passes ints).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Protocol, Self, TypeVar, TypeVarTuple

import anyio

from .._exceptions import SupervisorClosedError
from .._lifecycle import AsyncClosable
from .._snapshot import PressureLevel
from ._std_handout import StdExecutorHandout
from ._threads import ThreadLane
from ._worker_budget import split_worker_budget

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
    from types import TracebackType

    from .._config import ConcurrencySettings
    from .._snapshot import MetricValue
    from ._backend import ProcessBackend
    from ._local._cpu_budget import CpuBudget
    from ._std_executors import LaneThreadExecutor, _Bridge

    class _Backend(ProcessBackend, Protocol):
        """A process backend that is also an async context manager."""

        async def __aenter__(self) -> Self: ...

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> bool | None: ...


__all__ = ("Executors", "split_worker_budget")

T = TypeVar("T")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")


def _make_backend(
    settings: ConcurrencySettings, cpu_workers: int, cpu_budget: CpuBudget | None = None
) -> _Backend:
    """Build the process backend named by ``settings.backend`` (imported lazily)."""
    if settings.backend == "dask":
        try:
            from ._dask._lane import DaskLane  # lazily: keeps the dask extra optional
        except ImportError as exc:
            raise ImportError(
                "concurrency.backend 'dask' needs the 'dask' extra: "
                "pip install 'resource-supervisor[dask]'"
            ) from exc
        return DaskLane(settings, max_workers=cpu_workers)
    from ._local._lane import ProcessLane  # lazily: only built on entry

    return ProcessLane(settings, max_workers=cpu_workers, cpu_budget=cpu_budget)


class Executors(StdExecutorHandout, AsyncClosable):
    """
    The executor broker: a thread lane for blocking I/O and a process lane for CPU work.

    Reached as ``sup.executors``. Use as an async context manager (the supervisor
    does): entering starts the lanes, which start no thread or process until
    first used; leaving closes them (see :meth:`aclose`).
    """

    def __init__(
        self,
        settings: ConcurrencySettings,
        *,
        cpu_workers: int,
        io_workers: int,
        cpu_budget: CpuBudget | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        """
        Prepare both lanes; nothing starts until ``async with``.

        Args:
            settings: The broker's settings (``concurrency:``).
            cpu_workers: Worker processes, already resolved from ``"auto"``.
            io_workers: Lane threads, already resolved from ``"auto"``. When
                ``cpu_workers + io_workers`` exceeds ``settings.max_total_workers``
                both are scaled down (:func:`split_worker_budget`).
            cpu_budget: The container's CPU tokens that the local process lane
                shares with the other server processes (multi-process mode).
            shutdown_timeout: Seconds closing waits for thread calls still running
                before it abandons them (``shutdown_timeout`` of the settings).

        Raises:
            ValueError: If a worker count is below 1.
        """
        self._settings = settings
        self._cpu_workers, self._io_workers = split_worker_budget(
            cpu_workers, io_workers, settings.max_total_workers
        )
        self._threads = ThreadLane(self._io_workers, close_timeout=shutdown_timeout)
        self._cpu_budget = cpu_budget
        self._backend: _Backend | None = None
        self._level = PressureLevel.NORMAL
        self._state = "new"  # new -> open -> closed
        self._stack = contextlib.AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Standard executors not yet shut down (made from any thread, hence the lock).
        self._std_lock = threading.Lock()
        self._std: set[_Bridge] = set()
        # (loop, its previous default executor, ours) while ours is the default.
        self._default: (
            tuple[asyncio.AbstractEventLoop, concurrent.futures.Executor | None, LaneThreadExecutor]
            | None
        ) = None

    @property
    def cpu_workers(self) -> int:
        """Most worker processes of the process lane (after ``max_total_workers``)."""
        return self._cpu_workers

    @property
    def io_workers(self) -> int:
        """Most threads of the thread lane (after ``max_total_workers``)."""
        return self._io_workers

    # -- lifecycle --------------------------------------------------------------
    async def __aenter__(self) -> Self:
        """
        Start both lanes (no thread or worker process starts until first use).

        Raises:
            RuntimeError: If entered twice.
            ImportError: If ``backend: dask`` is set without the ``dask`` extra.

        Cancellation:
            A cancelled entry closes whatever lane it had already started.
        """
        if self._state != "new":
            raise RuntimeError("Executors can be entered only once")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._threads)
            try:
                backend = _make_backend(self._settings, self._cpu_workers, self._cpu_budget)
                await stack.enter_async_context(backend)
            except BaseException:
                # Close the thread lane as a clean exit: handed the error, its task
                # group would re-raise it wrapped in an ExceptionGroup, which
                # ``except ImportError`` / ``except ConfigError`` would miss. (The
                # lane's aclose() shields itself; a shield here would nest wrongly
                # inside the lane's task group.)
                await stack.aclose()
                raise
            backend.set_pressure(self._level)
            self._backend = backend
            self._stack = stack.pop_all()
        self._state = "open"
        return self

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """After :meth:`aclose` on ``async with`` exit: leave both lanes' contexts."""
        await self._stack.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """
        Close both lanes: queued calls fail, running ones are waited for (bounded).

        Idempotent. It always closes both lanes, even when cancelled or when closing
        one of them fails. Afterwards every method raises
        ``SupervisorClosedError("executors")``. Calls queued in a lane fail with
        :class:`SupervisorClosedError`; running thread calls are waited for (up to
        the thread lane's close timeout); the process lane stops and reaps its
        workers, failing calls it can no longer finish. The standard executors are
        shut down (``submit`` raises :exc:`RuntimeError`), their calls not yet run
        fail with :class:`SupervisorClosedError`, and the loop's previous default
        executor is restored.

        Cancellation:
            Shielded: cancelling ``aclose`` does not stop it from closing both lanes;
            each lane bounds its own wait (see their ``aclose``).
        """
        if self._state == "closed":
            return
        self._state = "closed"
        backend = self._backend
        self._restore_default_executor()
        with self._std_lock:
            bridges, self._std = list(self._std), set()
        tasks = [task for bridge in bridges for task in bridge._abort()]
        with anyio.CancelScope(shield=True):
            try:
                await self._threads.aclose()
            finally:
                if backend is not None:
                    await backend.aclose()
            if tasks:
                # Closed lanes fail what the executors' tasks still hand them; bound
                # the wait for calls that outlived the thread lane's close timeout.
                with anyio.move_on_after(self._CLOSE_TIMEOUT):
                    await asyncio.wait(tasks)

    def _check_open(self) -> None:
        if self._state != "open":
            raise SupervisorClosedError("executors")

    # -- calls ------------------------------------------------------------------
    async def run_in_thread(
        self,
        func: Callable[[*Ts], T],
        *args: *Ts,
        abandon_on_cancel: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call deadline
    ) -> T:
        """
        Call ``func(*args)`` in the thread lane. Use functools.partial for keywords.

        For blocking I/O (files, sockets, drivers without asyncio support). The call
        runs in a copy of the caller's :mod:`contextvars` context.

        Args:
            func: A blocking callable; it must not touch the event loop.
            args: Positional arguments for *func*.
            abandon_on_cancel: What cancellation does once the thread runs.
            timeout: Seconds the caller waits, queueing included (``None`` = no
                limit). A running call cannot be interrupted: on expiry its thread is
                abandoned (it runs on, holding its lane thread until *func* returns,
                counted in ``thread_lane_abandoned``); a queued one never runs.

        Returns:
            Whatever ``func(*args)`` returns; its exceptions propagate unchanged.

        Raises:
            SupervisorClosedError: If the executors are not open, or close while the
                call is queued.
            CallTimeoutError: If *timeout* expired.

        .. versionchanged:: 0.2 ``timeout``.

        Cancellation:
            Checked before the call is queued. A call cancelled while queued never
            runs. A running *func* cannot be interrupted: by default the caller waits
            for it, then raises the cancellation and drops the result. With
            ``abandon_on_cancel=True`` the caller raises at once and the thread runs
            on unobserved; its slot is freed only when *func* returns.
        """
        self._check_open()
        return await self._threads.run(
            func, *args, abandon_on_cancel=abandon_on_cancel, timeout=timeout
        )

    async def run_in_process(
        self,
        func: Callable[[*Ts], T],
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call worker deadline
    ) -> T:
        """
        Call ``func(*args)`` in a worker process. Use functools.partial for keywords.

        For CPU-bound work. *func*, the arguments and the result cross a process
        boundary, so they must pickle (a lambda or a local function does not).

        Args:
            func: A picklable, module-level callable.
            args: Picklable positional arguments for *func*.
            timeout: Seconds the call may run; on expiry its worker is killed and
                replaced (``None`` = no limit).

        Returns:
            Whatever ``func(*args)`` returns; its exception propagates with its type.

        Raises:
            SupervisorClosedError: If the executors are not open or close meanwhile.
            UnpicklableError: If *func* or an argument cannot be pickled.
            WorkerCrashedError: If the worker died while running the call.
            CallTimeoutError: If *timeout* expired.
            OverloadedError: At CRITICAL pressure, when the lane's queue is full.

        Cancellation:
            Checked before the call is queued. A call cancelled while queued never
            runs. Once it runs, the caller raises the cancellation at once: the
            local backend kills and replaces the worker running it; the Dask backend
            lets it finish on its worker and drops the result.
        """
        self._check_open()
        assert self._backend is not None
        return await self._backend.run(func, args, timeout=timeout)

    def map_in_processes(
        self,
        func: Callable[[T], R],
        items: Iterable[T] | AsyncIterable[T],
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        max_in_flight: int | None = None,
    ) -> AsyncIterator[R]:
        """
        Map *func* over *items* in worker processes, lazily, in chunks.

        Use as ``async for result in sup.executors.map_in_processes(f, items):``.
        Items are read only as chunks can be sent, so an endless or async input is
        fine; memory stays bounded by ``max_in_flight`` chunks.

        Args:
            func: A picklable one-argument callable.
            items: A sync or async iterable of picklable items.
            ordered: Yield results in input order (else as they complete).
            chunksize: Items per chunk; ``None`` picks one automatically: chunks
                grow from one item to the lane's target duration, and when *items*
                has a length (a list, tuple, range) the last ones shrink so the
                workers finish together.
            max_in_flight: Most chunks sent and not yet yielded; ``None`` = twice the
                worker count.

        Returns:
            An async iterator of results. Breaking out of the loop, or closing the
            iterator, drops the chunks still in flight.

        Raises:
            SupervisorClosedError: If the executors are not open.
        """
        self._check_open()
        assert self._backend is not None
        return self._backend.map(
            func, items, ordered=ordered, chunksize=chunksize, max_in_flight=max_in_flight
        )

    def set_pressure(self, level: PressureLevel) -> None:
        """
        Tell the process backend the supervisor's pressure level (admission, sizing).

        Args:
            level: The level just graded. Kept and handed over on entry when the
                backend is not started yet.
        """
        self._level = level
        if self._backend is not None and self._state == "open":
            self._backend.set_pressure(level)

    def metrics(self) -> dict[str, MetricValue]:
        """
        Return the thread lane's and the process backend's metrics, merged.

        Returns:
            ``thread_lane_*`` metrics, plus the backend's ``process_*`` metrics
            once it has been started. Cheap; never blocks.
        """
        data = self._threads.metrics()
        if self._backend is not None:
            data.update(self._backend.metrics())
        return data
