"""
The facade's standard-library executors: handed out, tracked, and the loop's default.

Covers: :class:`StdExecutorHandout`, the part of :class:`._executors.Executors`
that hands out ``concurrent.futures`` executors backed by the lanes
(``thread_executor``, ``process_executor``), keeps the ones not yet shut down so
that closing the facade shuts them down, and installs one as the running loop's
default executor (``set_default_executor``), restoring the previous one at close.
Does not cover: the executors themselves and how they bridge threads to the loop
(:mod:`._std_executors`, :mod:`._executor_bridge`), or the lanes (:mod:`._threads`,
:mod:`._backend`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Protocol

from .._exceptions import SupervisorClosedError
from ._std_executors import LaneProcessExecutor, LaneThreadExecutor

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from ._backend import ProcessBackend
    from ._std_executors import _Bridge
    from ._threads import ThreadLane

__all__ = ("StdExecutorHandout",)


class _Facade(Protocol):
    """What these methods use of the facade."""

    _state: str
    _threads: ThreadLane
    _cpu_workers: int
    _io_workers: int
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int
    _std_lock: threading.Lock
    _std: set[_Bridge]
    _default: (
        tuple[asyncio.AbstractEventLoop, concurrent.futures.Executor | None, LaneThreadExecutor]
        | None
    )

    @property
    def _backend(self) -> ProcessBackend | None: ...
    def _check_open(self) -> None: ...
    def _forget(self, bridge: _Bridge) -> None: ...
    def _keep(self, bridge: _Bridge) -> None: ...
    def thread_executor(self, *, max_workers: int | None = None) -> LaneThreadExecutor: ...


class StdExecutorHandout:
    """Mixin of :class:`._executors.Executors`: the standard-library executors it hands out."""

    # set here, declared by the facade
    _default: (
        tuple[asyncio.AbstractEventLoop, concurrent.futures.Executor | None, LaneThreadExecutor]
        | None
    )

    # -- standard-library executors ------------------------------------------------
    _CLOSE_TIMEOUT = 10.0  # seconds aclose() waits for the standard executors' tasks

    def _forget(self: _Facade, bridge: _Bridge) -> None:
        with self._std_lock:
            self._std.discard(bridge)

    def _keep(self: _Facade, bridge: _Bridge) -> None:
        with self._std_lock:
            kept = self._state == "open"
            if kept:
                self._std.add(bridge)
        if not kept:  # closed meanwhile, from another thread
            bridge._abort()
            raise SupervisorClosedError("executors")

    def thread_executor(self: _Facade, *, max_workers: int | None = None) -> LaneThreadExecutor:
        """
        Return a new :class:`concurrent.futures.ThreadPoolExecutor` backed by the thread lane.

        For libraries that take an executor (``loop.run_in_executor``, helpers in data
        libraries). It starts no thread of its own: calls run in the lane, under its
        capacity and in its metrics. Usable from any thread; in the event loop's
        thread, ``submit`` works and a blocking wait raises instead of hanging (see
        :class:`LaneThreadExecutor`). Shut it down, or leave it to the supervisor's
        exit.

        Args:
            max_workers: Most of this executor's calls in the lane at once;
                ``None`` = the lane's capacity.

        Returns:
            The executor.

        Raises:
            SupervisorClosedError: If the executors are not open.
            ValueError: If *max_workers* is below 1.
        """
        self._check_open()
        assert self._loop is not None
        lane = self._threads
        executor = LaneThreadExecutor(
            loop=self._loop,
            loop_thread=self._loop_thread,
            max_workers=self._io_workers if max_workers is None else max_workers,
            run=lane.run,
            on_shutdown=self._forget,
        )
        self._keep(executor)
        return executor

    def process_executor(self: _Facade, *, max_workers: int | None = None) -> LaneProcessExecutor:
        """
        Return a new :class:`concurrent.futures.Executor` backed by the process lane.

        Each call is a ``run_in_process`` call, with its crash isolation
        (:class:`WorkerCrashedError` fails only that future) and admission
        (:class:`OverloadedError` at CRITICAL); ``map(..., chunksize=N)`` sends N
        items per call. Usable from any thread, like :meth:`thread_executor`.

        Args:
            max_workers: Most of this executor's calls in the lane at once;
                ``None`` = the lane's worker count.

        Returns:
            The executor.

        Raises:
            SupervisorClosedError: If the executors are not open.
            ValueError: If *max_workers* is below 1.
        """
        self._check_open()
        assert self._loop is not None
        backend = self._backend
        assert backend is not None

        async def run(call: Callable[[], object]) -> object:
            return await backend.run(call, (), timeout=None)

        executor = LaneProcessExecutor(
            loop=self._loop,
            loop_thread=self._loop_thread,
            max_workers=self._cpu_workers if max_workers is None else max_workers,
            run=run,
            on_shutdown=self._forget,
        )
        self._keep(executor)
        return executor

    def set_default_executor(
        self: _Facade, *, max_workers: int | None = None
    ) -> LaneThreadExecutor:
        """
        Make a :meth:`thread_executor` the running loop's default executor.

        Afterwards ``loop.run_in_executor(None, ...)`` and ``asyncio.to_thread``
        run in the thread lane. The loop's previous default executor is restored
        when the executors close (at the supervisor's exit); when it had none, a
        fresh ``ThreadPoolExecutor`` (which starts no thread until used) takes the
        place, as asyncio would create one. Calling it again while installed
        returns the installed executor.

        Args:
            max_workers: As for :meth:`thread_executor`.

        Returns:
            The installed executor.

        Raises:
            SupervisorClosedError: If the executors are not open.
            RuntimeError: If not called in the supervisor's event loop.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError("set_default_executor() must be called in the supervisor's loop")
        if self._default is not None:
            return self._default[2]
        executor = self.thread_executor(max_workers=max_workers)
        # asyncio has no public getter for the default executor: read it to restore it.
        previous = getattr(loop, "_default_executor", None)
        loop.set_default_executor(executor)
        self._default = (loop, previous, executor)
        return executor

    def _restore_default_executor(self: _Facade) -> None:
        installed, self._default = self._default, None
        if installed is None:
            return
        loop, previous, ours = installed
        if getattr(loop, "_default_executor", ours) is not ours:
            return  # someone installed another one since: leave theirs
        if not isinstance(previous, concurrent.futures.ThreadPoolExecutor):
            previous = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(previous)
