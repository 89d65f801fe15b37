"""
Cleanup handlers and the dispatcher that runs them.

Covers: the :class:`Cleanup` protocol and :data:`CleanupHandler` alias, the values
that describe a pass (:class:`CleanupRequest`, :class:`HandlerOutcome`,
:class:`CleanupReport`) and :class:`CleanupDispatcher`, which runs every registered
handler concurrently, each under its own timeout, and coalesces requests that arrive
while a pass is running.

Does not cover: deciding *when* to clean up (:func:`._policy.cleanup_due`, driven by
:mod:`._supervisor`), or the built-in participants themselves: memory reclaim
(:meth:`._memory.MemoryAdvisor.reclaim`) and idle-session eviction
(:meth:`._sessions.SessionRegistry.cleanup`).

Coalescing, by the request arriving while a pass runs::

    running pass   new request      what happens
    normal         normal           joins the running pass, gets its report
    normal         aggressive       one aggressive pass runs after it (later
                                    aggressive requests join that one)
    aggressive     either           joins the running pass
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable

import anyio

from ._participants import absorb, describe, must_propagate, run_in_daemon_thread

if TYPE_CHECKING:
    from ._snapshot import MetricsSnapshot, MetricValue, PressureLevel

__all__ = (
    "Cleanup",
    "CleanupDispatcher",
    "CleanupHandler",
    "CleanupReport",
    "CleanupRequest",
    "CleanupStatistics",
    "HandlerOutcome",
)

logger = logging.getLogger("resource_supervisor.cleanup")


@dataclass(frozen=True, slots=True)
class CleanupRequest:
    """
    What a cleanup pass is asked to do, and why.

    Attributes:
        aggressive: Free everything that can be freed (CRITICAL pressure), not just
            the cheap things.
        level: The pressure level when the request was made.
        reason: A short human-readable cause (``"memory warning"``, ``"manual"``).
        snapshot: The snapshot that triggered the request, if any.
        resource: What triggered it: ``"memory"``, ``"psi"``, ``"gpu"``, ``"manual"``...
        device: The device for device resources, e.g. ``"cuda:0"``.
    """

    aggressive: bool
    level: PressureLevel
    reason: str
    snapshot: MetricsSnapshot | None
    resource: str = "memory"
    device: str | None = None


@runtime_checkable
class Cleanup(Protocol):
    """
    An object that frees resources when asked: anything with ``async def cleanup(request)``.
    """

    async def cleanup(self, request: CleanupRequest) -> None:
        """
        Free what this participant can for *request*; raise on failure.

        Cancellation:
            The dispatcher cancels the call when its timeout expires or the pass is
            cancelled; free what is safe to free and let the cancellation propagate.
        """
        ...


CleanupHandler: TypeAlias = (
    Cleanup | Callable[[CleanupRequest], Awaitable[None]] | Callable[[CleanupRequest], None]
)
"""A :class:`Cleanup` object, or a callable taking a :class:`CleanupRequest`: async
(awaited on the event loop) or sync (called in a worker thread, never on the loop)."""


@dataclass(frozen=True, slots=True)
class HandlerOutcome:
    """
    How one handler fared in a pass.

    Attributes:
        name: The name the handler was registered under.
        status: ``"ok"``, ``"error"`` (it raised) or ``"timeout"`` (it was cancelled
            after its timeout).
        duration_seconds: How long it ran.
        error: ``"TypeName: message"`` for an error, a short note for a timeout.
    """

    name: str
    status: Literal["ok", "error", "timeout"]
    duration_seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """
    The result of one cleanup pass.

    Attributes:
        request: The request that started the pass.
        outcomes: One outcome per handler, in registration order.
        started_at: Wall-clock time (``time.time()``) the pass started.
        duration_seconds: How long the pass took.
        memory_before_bytes: Memory used right before the handlers ran.
        memory_after_bytes: Memory used right after they finished.
    """

    request: CleanupRequest
    outcomes: tuple[HandlerOutcome, ...]
    started_at: float
    duration_seconds: float
    memory_before_bytes: int
    memory_after_bytes: int

    @property
    def bytes_freed(self) -> int:
        """Memory freed during the pass (never negative: growth counts as 0)."""
        return max(0, self.memory_before_bytes - self.memory_after_bytes)

    @property
    def ok(self) -> bool:
        """Whether every handler succeeded."""
        return all(outcome.status == "ok" for outcome in self.outcomes)

    @property
    def failures(self) -> tuple[HandlerOutcome, ...]:
        """The outcomes that are errors or timeouts."""
        return tuple(outcome for outcome in self.outcomes if outcome.status != "ok")


@dataclass(frozen=True, slots=True)
class CleanupStatistics:
    """
    Counters of a :class:`CleanupDispatcher`.

    Attributes:
        runs: Passes that ran to completion.
        handler_failures: Handler errors and timeouts, over all passes.
        handler_timeouts: Handler timeouts, over all passes.
        coalesced: :meth:`~CleanupDispatcher.run` calls that joined another pass
            instead of starting their own.
        last_report: The report of the latest completed pass.
    """

    runs: int
    handler_failures: int
    handler_timeouts: int
    coalesced: int
    last_report: CleanupReport | None


class _Registration:
    """One registered handler; ``thread_busy`` is set while a sync call runs in its thread."""

    __slots__ = ("call", "is_async", "name", "thread_busy", "timeout")

    def __init__(self, name: str, call: Callable[[CleanupRequest], object], timeout: float) -> None:
        self.name = name
        self.call = call
        self.timeout = timeout
        dunder = getattr(call, "__call__", None)  # noqa: B004 - async __call__ objects
        self.is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(dunder)
        self.thread_busy = False


class _Pass:
    """One cleanup pass: its request, and its report once done (``None`` if abandoned)."""

    __slots__ = ("done", "report", "request")

    def __init__(self, request: CleanupRequest) -> None:
        self.request = request
        self.done = anyio.Event()
        self.report: CleanupReport | None = None


def _default_name(handler: object) -> str:
    for candidate in (handler, type(handler)):
        name = getattr(candidate, "__qualname__", None) or getattr(candidate, "__name__", None)
        if isinstance(name, str):
            return name
    return repr(handler)  # pragma: no cover - every type has a __qualname__


def _check_timeout(timeout: float, what: str) -> None:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"{what} must be a positive number of seconds, got {timeout!r}")


class CleanupDispatcher:
    """
    Run registered cleanup handlers concurrently, each under its own timeout.

    Each handler runs in its own task and cancel scope, and whatever it raises
    (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a ``CancelledError``
    or a cancellation of its own task included) is its ``"error"`` outcome: every
    registered handler appears in every report with its true status, and
    :attr:`CleanupReport.ok` reflects them all (see :mod:`._participants` for the
    one exception, a real Ctrl-C under Python's default SIGINT handler).

    One handler's error or hang never affects the others: an error is logged (logger
    ``resource_supervisor.cleanup``, with its traceback) and recorded in the report;
    a handler still running at its timeout is cancelled and recorded as a timeout.
    Requests that arrive while a pass runs are coalesced (see the module docstring).
    """

    def __init__(self, *, handler_timeout: float, measure_used_bytes: Callable[[], int]) -> None:
        """
        Make a dispatcher with no handlers.

        Args:
            handler_timeout: Default seconds each handler may run.
            measure_used_bytes: Returns the memory used now, in bytes; called right
                before and after the handlers. Must be cheap and must not block.

        Raises:
            ValueError: If *handler_timeout* is not a positive number.
        """
        _check_timeout(handler_timeout, "handler_timeout")
        self._handler_timeout = handler_timeout
        self._measure_used_bytes = measure_used_bytes
        self._handlers: dict[str, _Registration] = {}
        self._current: _Pass | None = None
        self._next_aggressive: _Pass | None = None
        self._runs = 0
        self._handler_failures = 0
        self._handler_timeouts = 0
        self._coalesced = 0
        self._last_report: CleanupReport | None = None

    def register(
        self, handler: CleanupHandler, *, name: str | None = None, timeout: float | None = None
    ) -> Callable[[], None]:
        """
        Add *handler* to every later pass.

        A sync handler (a plain function, or an object whose ``cleanup`` or
        ``__call__`` is not ``async``) is accepted and called in a worker thread
        (a daemon thread of its own), so it never blocks the event loop; at its
        timeout the thread is abandoned, and until that call returns the handler
        is reported as an error on later passes instead of being started again.
        If a sync callable returns an awaitable (a ``lambda`` around a coroutine
        function), that is awaited on the loop.

        Args:
            handler: An object with ``async def cleanup(request)``, or an async
                callable taking a :class:`CleanupRequest`; or their sync forms.
            name: The name in reports; defaults to the function's or the class's
                qualified name.
            timeout: Seconds this handler may run; defaults to ``handler_timeout``.

        Returns:
            A function that unregisters the handler (idempotent). A pass already
            running still runs it.

        Raises:
            TypeError: If *handler* is neither a :class:`Cleanup` nor callable.
            ValueError: If *name* is already registered, or *timeout* is not positive.
        """
        call: Callable[[CleanupRequest], object]
        if isinstance(handler, Cleanup) and callable(handler.cleanup):
            call = handler.cleanup
        elif callable(handler):
            call = handler
        else:
            raise TypeError(
                "a cleanup handler must be an object with `async def cleanup(self, request)` "
                f"or an async callable taking a CleanupRequest, not {type(handler).__name__}"
            )
        if timeout is not None:
            _check_timeout(timeout, "timeout")
        if name is None:
            name = _default_name(handler)
        if name in self._handlers:
            raise ValueError(
                f"a cleanup handler named {name!r} is already registered; pass name= to tell "
                "them apart"
            )
        registration = _Registration(
            name, call, self._handler_timeout if timeout is None else timeout
        )
        self._handlers[name] = registration

        def unregister() -> None:
            if self._handlers.get(name) is registration:
                del self._handlers[name]

        return unregister

    @property
    def handler_names(self) -> tuple[str, ...]:
        """The names of the registered handlers, in registration order."""
        return tuple(self._handlers)

    async def run(self, request: CleanupRequest) -> CleanupReport:
        """
        Run every registered handler for *request*, or join a pass already running.

        A request no more aggressive than the running pass waits for it and returns
        its report. An aggressive request arriving during a normal pass waits for it,
        then runs (or joins) the one aggressive pass queued after it.

        Args:
            request: What to clean up and why.

        Returns:
            The report of the pass this call ran or joined.

        Handler errors are never raised: they are logged and recorded in the report.

        Cancellation:
            If the call that runs a pass is cancelled, its handlers are cancelled, no
            report is recorded and the cancellation propagates; callers that had
            joined that pass start or join another. A cancelled call that had only
            joined a pass leaves it running for the others.
        """
        while True:
            # Cases: nothing runs -> run now (or join the aggressive pass about to
            # start, which covers any request); a pass runs that is at least as
            # aggressive -> join it; a normal pass runs and this one is aggressive
            # -> join the queued aggressive pass, or queue one.
            current = self._current
            queued = self._next_aggressive
            if current is None and queued is None:
                return await self._run_pass(_Pass(request))
            if current is not None and (not request.aggressive or current.request.aggressive):
                joined = current
            elif queued is not None:
                joined = queued
            else:
                return await self._run_queued(_Pass(request))
            self._coalesced += 1
            await joined.done.wait()
            if joined.report is not None:
                return joined.report
            # The pass was cancelled before it finished: start over.

    async def _run_queued(self, queued: _Pass) -> CleanupReport:
        self._next_aggressive = queued
        try:
            while self._current is not None:
                await self._current.done.wait()
        except BaseException:
            # Cancelled while waiting: whoever joined this pass starts over.
            self._next_aggressive = None
            queued.done.set()
            raise
        self._next_aggressive = None
        return await self._run_pass(queued)

    async def _run_pass(self, run: _Pass) -> CleanupReport:
        self._current = run
        try:
            report = await self._execute(run.request)
            run.report = report
            self._runs += 1
            self._last_report = report
            return report
        finally:
            self._current = None
            run.done.set()

    async def _execute(self, request: CleanupRequest) -> CleanupReport:
        registrations = tuple(self._handlers.values())
        outcomes: list[HandlerOutcome | None] = [None] * len(registrations)
        started_at = time.time()
        start = time.perf_counter()
        before = self._measure_used_bytes()
        async with anyio.create_task_group() as tg:
            for index, registration in enumerate(registrations):
                tg.start_soon(self._run_handler, registration, request, outcomes, index)
        after = self._measure_used_bytes()
        final = tuple(outcome for outcome in outcomes if outcome is not None)
        return CleanupReport(
            request=request,
            outcomes=final,
            started_at=started_at,
            duration_seconds=time.perf_counter() - start,
            memory_before_bytes=before,
            memory_after_bytes=after,
        )

    async def _run_handler(
        self,
        registration: _Registration,
        request: CleanupRequest,
        outcomes: list[HandlerOutcome | None],
        index: int,
    ) -> None:
        # Each handler runs in its own task and scope: whatever it raises, a
        # CancelledError or a cancellation of its own task included, is its outcome
        # and never reaches its siblings (see _participants); only the timeout of
        # this scope or a real cancellation of the pass propagates out of the try.
        start = time.perf_counter()
        error: BaseException | None = None
        with anyio.move_on_after(registration.timeout) as scope:
            try:
                await self._call(registration, request)
            except BaseException as exc:
                if must_propagate(exc, in_thread=not registration.is_async):
                    raise
                absorb(exc)
                error = exc
                logger.warning(
                    "cleanup handler %r failed (%s)",
                    registration.name,
                    request.reason,
                    exc_info=exc,
                )
        duration = time.perf_counter() - start
        if scope.cancelled_caught:
            self._handler_failures += 1
            self._handler_timeouts += 1
            outcome = HandlerOutcome(
                registration.name,
                "timeout",
                duration,
                f"did not finish within {registration.timeout:g} s",
            )
        elif error is not None:
            self._handler_failures += 1
            outcome = HandlerOutcome(registration.name, "error", duration, describe(error))
        else:
            outcome = HandlerOutcome(registration.name, "ok", duration)
        outcomes[index] = outcome

    def metrics(self) -> dict[str, MetricValue]:
        """The snapshot's cleanup counters (a :class:`~._contributions.MetricsContributor`)."""
        return {
            "cleanup_runs_total": self._runs,
            "cleanup_handler_failures_total": self._handler_failures,
            "cleanup_handler_timeouts_total": self._handler_timeouts,
        }

    def statistics(self) -> CleanupStatistics:
        """Return the current counters (see :class:`CleanupStatistics`)."""
        return CleanupStatistics(
            runs=self._runs,
            handler_failures=self._handler_failures,
            handler_timeouts=self._handler_timeouts,
            coalesced=self._coalesced,
            last_report=self._last_report,
        )

    @staticmethod
    async def _call(registration: _Registration, request: CleanupRequest) -> None:
        if registration.is_async:
            result = registration.call(request)
        else:
            # A sync handler runs in a worker thread, never on the loop. One still
            # running from an earlier pass (abandoned at its timeout) is not started
            # again, so hung threads cannot pile up.
            if registration.thread_busy:
                raise _StillRunningError
            registration.thread_busy = True
            call = functools.partial(_call_in_thread, registration, request)
            result = await run_in_daemon_thread(call)
        if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
            await result


def _call_in_thread(registration: _Registration, request: CleanupRequest) -> object:
    try:
        return registration.call(request)
    finally:
        registration.thread_busy = False


class _StillRunningError(RuntimeError):
    """A sync handler's call from an earlier pass has not returned yet."""

    def __str__(self) -> str:
        return "still running since an earlier pass (its thread was abandoned at its timeout)"
