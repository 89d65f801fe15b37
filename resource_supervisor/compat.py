"""
Synchronous facade with the original names: ``ResourceManager`` and its
``memory_manager``, ``concurrency_manager`` and ``session_manager``.

For code written against the original design::

    from resource_supervisor.compat import ResourceManager

    rm = ResourceManager()                 # the one instance
    rm.metrics["system_memory_percent"]
    rm.update_metrics()
    rm.request_cleanup(aggressive=False, reason="manual")
    fut = rm.concurrency_manager.run_in_thread_pool(fn, 1, key="v")   # concurrent.futures.Future
    for r in rm.concurrency_manager.map_tasks_in_process_pool(square, range(100)): ...
    rm.memory_manager.optimize_batch_size(base_batch_size=64, min_batch_size=16)

Two ways it runs:

* From plain synchronous code, the first ``ResourceManager()`` starts a
  :class:`Supervisor` on an event loop in a background daemon thread (an anyio
  blocking portal). It is shut down by :meth:`ResourceManager.shutdown` or, at the
  latest, when the interpreter exits (``atexit``), so a script exits by itself and
  leaves no worker process behind.
* From a worker thread of a running async supervisor (``sup.executors.run_in_thread``
  or ``anyio.to_thread.run_sync``), ``ResourceManager()`` drives that supervisor.

Unlike the async API, this facade forwards ``**kwargs`` to your function, as the
original design did.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import queue
import threading
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import anyio
import anyio.from_thread
from anyio.from_thread import BlockingPortal

from ._config import load_settings
from ._exceptions import NoSupervisorError, SupervisorClosedError
from ._supervisor import Supervisor

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
    from contextlib import AbstractContextManager

    from ._cleanup import CleanupReport
    from ._config import SupervisorSettings
    from ._snapshot import MetricValue

__all__ = ("ConcurrencyManager", "MemoryManager", "ResourceManager", "SessionManager")

T = TypeVar("T")
R = TypeVar("R")

_MAP_BATCH = 512  # results fetched per portal round trip in map_tasks_in_process_pool


class _Driver:
    """Runs coroutines on the supervisor's loop, from any thread."""

    def __init__(self, supervisor: Supervisor, portal: BlockingPortal | None) -> None:
        self.supervisor = supervisor
        self._portal = portal
        self.closed = False  # set once the owned loop is shutting down

    def _through_portal(
        self, portal: BlockingPortal, func: Callable[..., Any], *args: object
    ) -> Any:
        if self.closed:
            raise SupervisorClosedError("facade")
        try:
            return portal.call(func, *args)
        except (RuntimeError, concurrent.futures.CancelledError) as exc:
            # The portal stopped (or cancelled this call) because the facade shut
            # down, e.g. at interpreter exit with work in flight.
            if self.closed:
                raise SupervisorClosedError("facade") from exc
            raise

    def call(self, func: Callable[..., Awaitable[T]], *args: object) -> T:
        if self._portal is not None:
            return cast("T", self._through_portal(self._portal, func, *args))
        return anyio.from_thread.run(_call, func, *args)

    def call_sync(self, func: Callable[..., T], *args: object) -> T:
        if self._portal is not None:
            return cast("T", self._through_portal(self._portal, func, *args))
        return anyio.from_thread.run_sync(func, *args)

    def start(
        self, func: Callable[..., Awaitable[T]], *args: object
    ) -> concurrent.futures.Future[T]:
        if self._portal is not None:
            if self.closed:
                raise SupervisorClosedError("facade")
            return self._portal.start_task_soon(func, *args)
        # a worker thread of an asyncio supervisor: schedule on its loop directly
        loop = anyio.from_thread.run_sync(asyncio.get_running_loop)
        return asyncio.run_coroutine_threadsafe(_call(func, *args), loop)


async def _call(func: Callable[..., Awaitable[T]], *args: object) -> T:
    return await func(*args)


class _OwnedLoop:
    """An event loop in a daemon thread with a blocking portal and a supervisor on it."""

    def __init__(self, settings: SupervisorSettings) -> None:
        ready: queue.SimpleQueue[BlockingPortal | BaseException] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="resource-supervisor-loop", daemon=True
        )
        self._thread.start()
        item = ready.get()
        if isinstance(item, BaseException):  # pragma: no cover - loop failed to start
            raise item
        self.portal = item
        self._cm: AbstractContextManager[Supervisor] = self.portal.wrap_async_context_manager(
            Supervisor(settings)
        )
        try:
            self.supervisor = self._cm.__enter__()
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    def _run(ready: queue.SimpleQueue[BlockingPortal | BaseException]) -> None:
        async def main() -> None:
            async with BlockingPortal() as portal:
                ready.put(portal)
                await portal.sleep_until_stopped()

        try:
            anyio.run(main)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread, which raises it
            ready.put(exc)

    def _stop_loop(self) -> None:
        # cancel_remaining: calls still in flight (a map fed from another thread)
        # must not hold the loop open; their callers get SupervisorClosedError.
        with contextlib.suppress(RuntimeError):  # the portal already stopped
            self.portal.call(functools.partial(self.portal.stop, cancel_remaining=True))
        self._thread.join(timeout=30)

    def close(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self._stop_loop()


class MemoryManager:
    """The original ``memory_manager``: batch-size advice and cleanup."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    def optimize_batch_size(self, base_batch_size: int = 64, min_batch_size: int = 16) -> int:
        """
        A batch size for the memory available now (see MemoryAdvisor).

        Args:
            base_batch_size: The size to use with plenty of memory.
            min_batch_size: Never advise less than this.

        Returns:
            A size between *min_batch_size* and *base_batch_size*.
        """
        return self._driver.call_sync(
            functools.partial(
                self._driver.supervisor.memory.optimize_batch_size,
                base_batch_size=base_batch_size,
                min_batch_size=min_batch_size,
            )
        )

    def cleanup(self, aggressive: bool = False) -> CleanupReport:  # noqa: FBT001, FBT002
        """
        Run cleanup now (the original positional ``aggressive`` flag is kept).

        Args:
            aggressive: Ask handlers to free as much as they can.

        Returns:
            The cleanup report.
        """
        return self._driver.call(
            functools.partial(
                self._driver.supervisor.request_cleanup, aggressive=aggressive, reason="manual"
            )
        )


class ConcurrencyManager:
    """The original ``concurrency_manager``: thread pool and process pool offload."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    def run_in_thread_pool(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """
        Run ``fn(*args, **kwargs)`` in the supervisor's thread lane.

        Args:
            fn: A blocking callable.
            args: Positional arguments.
            kwargs: Keyword arguments (forwarded, as in the original design).

        Returns:
            A :class:`concurrent.futures.Future` with the result.
        """
        call = functools.partial(fn, *args, **kwargs)
        return self._driver.start(self._driver.supervisor.executors.run_in_thread, call)

    def run_in_process_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """
        Run ``fn(*args, **kwargs)`` in a worker process and wait for the result.

        Args:
            fn: A picklable callable.
            args: Positional arguments.
            kwargs: Keyword arguments.

        Returns:
            The result.
        """
        call: Callable[[], T] = functools.partial(fn, *args, **kwargs)
        result: T = self._driver.call(self._driver.supervisor.executors.run_in_process, call)
        return result

    def map_tasks_in_process_pool(self, fn: Callable[[T], R], iterable: Iterable[T]) -> Iterator[R]:
        """
        Map *fn* over *iterable* in worker processes, in order, lazily.

        Args:
            fn: A picklable one-argument callable.
            iterable: The inputs; consumed lazily.

        Returns:
            An iterator of results in input order. Closing it early (``break``)
            stops the map and releases the workers.
        """
        driver = self._driver
        stream: AsyncIterator[R] = driver.supervisor.executors.map_in_processes(fn, iterable)

        async def take() -> list[R]:
            batch: list[R] = []
            async for item in stream:
                batch.append(item)
                if len(batch) >= _MAP_BATCH:
                    break
            return batch

        async def close() -> None:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

        def results() -> Iterator[R]:
            try:
                while True:
                    batch = driver.call(take)
                    if not batch:
                        return
                    yield from batch
            finally:
                driver.call(close)

        return results()


class SessionManager:
    """The original ``session_manager``: open, touch and close sessions."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    def open_session(self, session_id: str) -> None:
        """
        Open (or touch) a session; counted in ``active_sessions_rag``.

        Args:
            session_id: The session's id.
        """
        self._driver.call_sync(self._driver.supervisor.sessions.open, session_id)

    def touch_session(self, session_id: str) -> None:
        """
        Mark a session as used now.

        Args:
            session_id: The session's id.
        """
        self._driver.call_sync(self._driver.supervisor.sessions.touch, session_id)

    def close_session(self, session_id: str) -> None:
        """
        Close a session (runs its close callback).

        Args:
            session_id: The session's id.
        """
        self._driver.call(self._driver.supervisor.sessions.close, session_id)

    @property
    def active_sessions(self) -> int:
        """Sessions open now."""
        return self._driver.call_sync(_active_sessions, self._driver.supervisor)


class ResourceManager:
    """
    The original central manager, as a synchronous facade over a :class:`Supervisor`.

    ``ResourceManager()`` returns the one instance: inside a worker thread of a
    running async supervisor it drives that supervisor; on the event loop thread of
    a running supervisor it raises :exc:`RuntimeError` (blocking there would
    deadlock that loop, and a second supervisor would double its budgets; use the
    async API there); elsewhere it starts (once)
    a supervisor on a background event loop, from ``config_path`` or the
    environment (see :func:`load_settings`).

    Args:
        config_path: YAML file with a ``resource_management:`` section (first call only).
        settings: Settings to use instead of a file (first call only).
    """

    _lock: ClassVar = threading.Lock()
    _instance: ClassVar[ResourceManager | None] = None

    _driver: _Driver
    _owned: _OwnedLoop | None
    memory_manager: MemoryManager
    concurrency_manager: ConcurrencyManager
    session_manager: SessionManager

    def __new__(
        cls,
        config_path: str | os.PathLike[str] | None = None,
        *,
        settings: SupervisorSettings | None = None,
    ) -> ResourceManager:
        running = _running_supervisor()
        if running is not None:
            return cls._bind(_Driver(running, None), None)
        on_loop = _supervisor_on_this_loop()
        if on_loop is not None:
            # Blocking on this thread would stop the very loop the supervisor runs on
            # (a deadlock), and a second supervisor would double every budget.
            raise RuntimeError(
                f"ResourceManager() was called on the event loop thread where {on_loop!r} "
                "runs: the sync facade cannot block this loop, and starting a second "
                "supervisor would double its budgets. Use the async API here "
                "(Supervisor.current()), or call the facade from a worker thread "
                "(await sup.executors.run_in_thread(legacy_function))"
            )
        with cls._lock:
            if cls._instance is None:
                chosen = settings if settings is not None else load_settings(config_path)
                owned = _OwnedLoop(chosen)
                cls._instance = cls._bind(_Driver(owned.supervisor, owned.portal), owned)
                atexit.register(cls._instance.shutdown)
                _at_threading_shutdown(cls._instance.shutdown)
            return cls._instance

    @classmethod
    def _bind(cls, driver: _Driver, owned: _OwnedLoop | None) -> ResourceManager:
        self = object.__new__(cls)
        self._driver = driver
        self._owned = owned
        self.memory_manager = MemoryManager(driver)
        self.concurrency_manager = ConcurrencyManager(driver)
        self.session_manager = SessionManager(driver)
        return self

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor behind this facade."""
        return self._driver.supervisor

    @property
    def metrics(self) -> dict[str, MetricValue]:
        """The latest metrics as a plain dict (``pressure_level`` as its name)."""
        snapshot = self._driver.call_sync(lambda: self._driver.supervisor.metrics)
        data: dict[str, MetricValue] = dict(snapshot.items())
        data["pressure_level"] = snapshot.pressure_level.name
        return data

    def update_metrics(self) -> dict[str, MetricValue]:
        """
        Sample now and return the metrics dict.

        Returns:
            The new metrics, as :attr:`metrics`.
        """
        self._driver.call(self._driver.supervisor.update_metrics)
        return self.metrics

    def request_cleanup(self, *, aggressive: bool = False, reason: str = "manual") -> CleanupReport:
        """
        Run cleanup now and wait for its report.

        Args:
            aggressive: Ask handlers to free as much as they can.
            reason: Carried into the request and report.

        Returns:
            The :class:`CleanupReport`.
        """
        return self._driver.call(
            functools.partial(
                self._driver.supervisor.request_cleanup, aggressive=aggressive, reason=reason
            )
        )

    def shutdown(self) -> None:
        """
        Stop the background supervisor this facade started (workers, threads, loop).

        Idempotent. A facade bound to an async supervisor does nothing: that
        supervisor's ``async with`` owns it. After shutdown, the next
        ``ResourceManager()`` starts a fresh supervisor.
        """
        owned, self._owned = self._owned, None
        if owned is None:
            return
        self._driver.closed = True
        with ResourceManager._lock:
            if ResourceManager._instance is self:
                ResourceManager._instance = None
        atexit.unregister(self.shutdown)
        owned.close()


def _at_threading_shutdown(callback: Callable[[], None]) -> None:
    """
    Run *callback* when the interpreter starts shutting down, before it joins the
    non-daemon threads: a thread that keeps using the facade (feeding a map, say)
    then gets SupervisorClosedError and ends, instead of keeping the process alive
    while atexit (which runs after those joins) waits forever. The standard
    library's thread pools use the same hook.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - other interpreters: atexit only
        return
    with contextlib.suppress(RuntimeError):  # shutdown already under way
        register(callback)


def _active_sessions(supervisor: Supervisor) -> int:
    return supervisor.sessions.active


def _supervisor_on_this_loop() -> Supervisor | None:
    """The supervisor running on the event loop of this very thread, if any."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    try:
        return Supervisor.current()
    except NoSupervisorError:
        return None


def _running_supervisor() -> Supervisor | None:
    """The async supervisor whose worker thread we are in, if any."""
    try:
        return anyio.from_thread.run_sync(Supervisor.current)
    except (RuntimeError, NoSupervisorError):
        return None
