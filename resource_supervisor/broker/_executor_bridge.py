"""
How a call submitted to a standard-library executor from any thread reaches a lane.

Covers: the executors' futures (:class:`_LaneFuture`), one submitted call
(:class:`_Work`) and what both executors share (:class:`_Bridge`): the executor's
``max_workers`` slots, scheduling onto the supervisor's loop, withdrawal of
cancelled calls and shutdown. Does not cover: the executors' public faces
(:mod:`._std_executors`) or the lanes themselves.

Slots. An executor lets at most ``max_workers`` of its calls into the lane at once.
The slot is taken in ``submit`` itself, under the executor's lock, in whichever
thread submits: a call that finds a free slot is *admitted* at once and its task is
scheduled on the loop; any other call waits, in submission order, until a finished
call hands its slot on. A process executor's admitted call is RUNNING from the moment
``submit`` returns, as ``ProcessPoolExecutor`` moves a call to RUNNING when it hands
it to its workers' queue: ``shutdown(cancel_futures=True)`` right after a burst of
submits then cancels only the calls that had no slot, wherever the loop was. A thread
executor's call moves to RUNNING in the lane thread, as ``ThreadPoolExecutor``'s
does, so cancelling an admitted call that has not started withdraws it from the lane.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import SupervisorClosedError
from .._lifecycle import AsyncClosable

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

_DEADLOCK = (
    "this would block the event loop's own thread, which drives the supervised lanes, "
    "forever: await asyncio.wrap_future(future) (or use run_in_executor / async with) there"
)


class _LaneFuture(concurrent.futures.Future[T]):
    """A future that refuses a blocking wait in the thread that must complete it."""

    def __init__(self, loop_thread: int) -> None:
        super().__init__()
        self._loop_thread = loop_thread

    def _check_wait(self, timeout: float | None) -> None:
        if timeout is None and not self.done() and threading.get_ident() == self._loop_thread:
            raise RuntimeError(f"future.result() {_DEADLOCK}")

    def result(self, timeout: float | None = None) -> T:
        """As :meth:`concurrent.futures.Future.result`; see the module docstring."""
        self._check_wait(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As :meth:`concurrent.futures.Future.exception`; see the module docstring."""
        self._check_wait(timeout)
        return super().exception(timeout)


class _Work:
    """One submitted call, its future and, once admitted, the task driving it."""

    __slots__ = ("__weakref__", "args", "fn", "future", "kwargs", "task")

    def __init__(
        self,
        future: _LaneFuture[Any],
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task: asyncio.Task[None] | None = None

    def run(self) -> None:
        """Run the call in the current (lane) thread and settle the future."""
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            self.future.set_exception(exc)
            # No cycle exc -> traceback -> frame -> self (as ThreadPoolExecutor).
            self = None  # type: ignore[assignment]
        else:
            self.future.set_result(result)

    def notify_cancelled(self) -> None:
        """Tell ``wait()``/``as_completed()`` waiters that a cancelled call never runs."""
        if self.future.cancelled():
            # RuntimeError: notified already (by the lane thread or the slot hand-over).
            with contextlib.suppress(RuntimeError):
                self.future.set_running_or_notify_cancel()

    def fail(self, exc: BaseException) -> None:
        """Settle the future with *exc* unless it is already settled."""
        future = self.future
        if future.done():
            return
        try:
            if future.running() or future.set_running_or_notify_cancel():
                future.set_exception(exc)
        except concurrent.futures.InvalidStateError:  # settled meanwhile by its thread
            pass


class _Bridge(AsyncClosable):
    """What both executors share: slots, scheduling onto the loop, shutdown."""

    _max_workers: int
    # True: an admitted call is RUNNING at once (process executor); False: it moves to
    # RUNNING in the lane thread (thread executor).
    _RUNNING_WHEN_ADMITTED = False

    async def aclose(self) -> None:
        """
        Shut down and wait for every call submitted here (``ashutdown()``); also
        what ``async with`` does on exit.

        Cancellation:
            As ``ashutdown()``: stops waiting; the executor stays shut down and its
            running calls go on.
        """
        await self._shutdown_async(cancel_futures=False)

    def _setup(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        loop_thread: int,
        max_workers: int,
        on_shutdown: Callable[[_Bridge], None],
    ) -> None:
        self._loop = loop
        self._loop_thread = loop_thread
        self._max_workers = max_workers
        self._lock = threading.Lock()
        # Guarded by _lock: slots not held by an admitted call, and the calls waiting
        # for one (submission order).
        self._free_slots = max_workers
        self._waiting: collections.OrderedDict[_Work, None] = collections.OrderedDict()
        # Calls not settled yet, by future. The future's done callback finds its call
        # here rather than holding it, so a settled call is referenced by nothing
        # (no future -> callback -> call -> future cycle keeps the callable alive).
        self._works: dict[concurrent.futures.Future[Any], _Work] = {}
        # Tasks driving calls through the lane (the loop's thread only). A future is
        # settled in the lane's thread a moment before the lane counts the call on
        # the loop; shutting down waits for these too, so the lane's figures are
        # final when ``ashutdown`` returns.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._on_shutdown = on_shutdown

    async def _execute(self, work: _Work) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- submitting (any thread) -------------------------------------------------
    def _submit(
        self, fn: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> _LaneFuture[Any]:
        future: _LaneFuture[Any] = _LaneFuture(self._loop_thread)
        work = _Work(future, fn, args, kwargs)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._works[future] = work
            admitted = self._free_slots > 0
            if admitted:
                self._free_slots -= 1
                if self._RUNNING_WHEN_ADMITTED:
                    # Under the lock: shutdown lists the calls under it too, so it sees
                    # this one only once it is RUNNING and cannot cancel it.
                    future.set_running_or_notify_cancel()
            else:
                self._waiting[work] = None
        future.add_done_callback(self._settled)
        if not admitted:
            return future
        if threading.get_ident() == self._loop_thread:
            self._start(work)
            return future
        try:
            self._loop.call_soon_threadsafe(self._start, work)
        except RuntimeError:  # the loop is closed: the supervisor is gone
            with self._lock:
                self._works.pop(future, None)
                self._free_slots += 1
            work.fail(SupervisorClosedError("executors"))
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return future

    def _settled(self, future: concurrent.futures.Future[Any]) -> None:
        """Done callback (any thread): forget the call; withdraw it if cancelled."""
        with self._lock:
            work = self._works.pop(future, None)
            waited = work is not None and self._waiting.pop(work, False) is None
        if work is not None and future.cancelled():
            task = work.task
            if waited:  # it never had a slot: it is simply gone
                work.notify_cancelled()
            elif task is not None:
                # Drop it from the lane's queue rather than let it reach a thread just
                # to be skipped. The callback runs in the thread that cancelled it.
                self._call_on_loop(task.cancel)

    def _call_on_loop(self, callback: Callable[[], object]) -> None:
        if threading.get_ident() == self._loop_thread:
            callback()
            return
        # RuntimeError: the loop is closed; there is nothing left to withdraw.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    # -- slots (the loop's thread) ----------------------------------------------------
    def _start(self, work: _Work) -> None:
        """Create the task that drives admitted *work*; its slot goes on if cancelled."""
        if work.future.cancelled():  # cancelled before its task existed
            work.notify_cancelled()
            self._hand_on()
            return
        task = self._loop.create_task(self._drive(work), name="resource_supervisor.executor")
        work.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_admitted(self) -> _Work | None:
        """The next waiting call that takes over a freed slot, or None (slot freed)."""
        with self._lock:
            while self._waiting:
                work, _ = self._waiting.popitem(last=False)
                if self._RUNNING_WHEN_ADMITTED:
                    if work.future.set_running_or_notify_cancel():
                        return work
                elif not work.future.cancelled():
                    return work
                else:
                    work.notify_cancelled()
            self._free_slots += 1
            return None

    def _hand_on(self) -> None:
        """A call has left its slot: give it to the next waiting call, if any."""
        work = self._next_admitted()
        if work is not None:
            self._start(work)

    async def _drive(self, work: _Work) -> None:
        # Only a weak reference while the call runs: once its future is settled the
        # call is referenced by nothing, so its result lives only as long as the
        # caller keeps the future (as ThreadPoolExecutor's ``del work_item``).
        ref = weakref.ref(work)
        try:
            if work.future.cancelled():
                work.notify_cancelled()
                return
            execute = self._execute(work)
            del work
            await execute
        except asyncio.CancelledError:
            # Withdrawn: the future was cancelled, or the executors are closing.
            if (alive := ref()) is not None:
                alive.notify_cancelled()
                alive.fail(SupervisorClosedError("executors"))
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            if (alive := ref()) is not None:
                alive.fail(exc)
        finally:
            alive = None
            self._hand_on()

    # -- shutdown ---------------------------------------------------------------------
    def _begin_shutdown(self, *, cancel_futures: bool) -> list[concurrent.futures.Future[Any]]:
        with self._lock:
            first = not self._closed
            self._closed = True
            outstanding = list(self._works)
        if cancel_futures:
            # The calls still waiting for a slot; an admitted call is as good as
            # started (a process call is RUNNING; a thread call is in the lane).
            with self._lock:
                waiting = [w.future for w in self._waiting]
            for future in waiting:
                future.cancel()
        if first:
            self._on_shutdown(self)
        return outstanding

    def _shutdown_sync(self, *, wait: bool, cancel_futures: bool) -> None:
        outstanding = self._begin_shutdown(cancel_futures=cancel_futures)
        if not wait:
            return
        if threading.get_ident() == self._loop_thread and any(
            not future.done() for future in outstanding
        ):
            raise RuntimeError(f"shutdown(wait=True) {_DEADLOCK}")
        # A cancelled call never runs: there is nothing to wait for.
        concurrent.futures.wait([f for f in outstanding if not f.cancelled()])

    async def _shutdown_async(self, *, cancel_futures: bool) -> None:
        outstanding = self._begin_shutdown(cancel_futures=cancel_futures)
        pending = [f for f in outstanding if not f.done()]  # cancelled ones are done
        if pending:
            await asyncio.wait([asyncio.wrap_future(f, loop=self._loop) for f in pending])
        if self._tasks:
            # Each ends right after the lane has counted its call.
            await asyncio.wait(set(self._tasks))

    def _abort(self) -> list[asyncio.Task[None]]:
        """On the loop, at supervisor exit: refuse new calls, fail the calls still
        waiting for a slot; return the live tasks of the admitted ones."""
        self._begin_shutdown(cancel_futures=False)
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.OrderedDict()
            works = list(self._works.values())
        for work in waiting:
            work.notify_cancelled()
            work.fail(SupervisorClosedError("executors"))
        return [w.task for w in works if w.task is not None and not w.task.done()]
