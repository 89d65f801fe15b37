"""
The session registry: open conversations, their idle time, and eviction.

Covers: :class:`SessionRegistry`, which tracks sessions by id (for example one RAG
conversation each), counts them (the ``active_sessions_rag`` metric), expires
sessions idle longer than the TTL (:meth:`SessionRegistry.expire`, which the
supervisor calls after every sample, whatever the pressure), and, as a cleanup
participant, evicts idle sessions at once (aggressive cleanup with a shorter TTL),
running each one's ``on_close`` callback. A session in use (inside
:meth:`SessionRegistry.session`) is never evicted.

Sessions are kept in least-recently-used order, so expiry looks only at the
sessions it evicts (plus any in use at the front), never at the whole registry:
calling it after every sample costs next to nothing with 100,000 sessions open.

Does not cover: what a session holds (the application keeps that and frees it in
``on_close``), when cleanup runs (:mod:`._policy`, :mod:`._supervisor`) or how
handlers are run (:mod:`._cleanup`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from ._exceptions import SupervisorClosedError
from ._lifecycle import AsyncClosable
from ._participants import absorb, must_propagate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

    from ._cleanup import CleanupRequest
    from ._snapshot import MetricValue

__all__ = ("SessionRegistry", "SessionStatistics")

logger = logging.getLogger("resource_supervisor.sessions")


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """
    Counters of a :class:`SessionRegistry`.

    Attributes:
        active: Sessions open now.
        in_use: Open sessions inside at least one :meth:`SessionRegistry.session` block.
        opened_total: Sessions opened since the registry was made.
        evicted_total: Sessions closed by :meth:`SessionRegistry.cleanup` for idling.
        close_failures: ``on_close`` callbacks that raised (anything) or outlived
            ``close_timeout``.
    """

    active: int
    in_use: int
    opened_total: int
    evicted_total: int
    close_failures: int = 0


class _Session:
    __slots__ = ("in_use", "last_used", "on_close")

    def __init__(self, last_used: float, on_close: Callable[[str], Awaitable[None]] | None) -> None:
        self.last_used = last_used
        self.on_close = on_close
        self.in_use = 0


def _check_seconds(value: float, what: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")


class SessionRegistry(AsyncClosable):
    """
    Open sessions by id, with idle-time eviction as a cleanup participant.

    A session lives from :meth:`open` (or the first :meth:`session` block) until
    :meth:`close`, expiry (:meth:`expire`), eviction by :meth:`cleanup`, or
    :meth:`aclose`. Leaving a :meth:`session` block does *not* close it, so one
    conversation spans many requests; it only marks the session idle from that moment.

    Register the registry with the cleanup dispatcher; it is a
    :class:`~resource_supervisor.Cleanup` object.
    """

    def __init__(
        self,
        *,
        ttl: float,
        aggressive_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        close_timeout: float = 10.0,
    ) -> None:
        """
        Make an empty registry.

        Args:
            ttl: Seconds a session may idle before :meth:`expire` or a normal
                cleanup evicts it.
            aggressive_ttl: The same for an aggressive cleanup; at most *ttl*.
            clock: Monotonic time in seconds (injectable for tests).
            close_timeout: Seconds each ``on_close`` callback may run.

        Raises:
            ValueError: If a duration is not a positive number, or
                *aggressive_ttl* exceeds *ttl*.
        """
        _check_seconds(ttl, "ttl")
        _check_seconds(aggressive_ttl, "aggressive_ttl")
        _check_seconds(close_timeout, "close_timeout")
        if aggressive_ttl > ttl:
            raise ValueError(f"aggressive_ttl ({aggressive_ttl:g}) must not exceed ttl ({ttl:g})")
        self._ttl = ttl
        self._aggressive_ttl = aggressive_ttl
        self._clock = clock
        self._close_timeout = close_timeout
        # least recently used first: every use moves a session to the end
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._in_use = 0  # sessions with in_use > 0
        self._opened_total = 0
        self._evicted_total = 0
        self._close_failures = 0
        self._closed = False

    @property
    def active(self) -> int:
        """Sessions open now."""
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def open(
        self, session_id: str, *, on_close: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        """
        Open session *session_id*, or touch it if it is already open.

        Args:
            session_id: The application's id for the session.
            on_close: Awaited with the id when the session is closed or evicted, to
                free what it holds. Ignored when the session is already open.

        Raises:
            SupervisorClosedError: If the registry was closed.
        """
        if self._closed:
            raise SupervisorClosedError("session registry")
        session = self._sessions.get(session_id)
        if session is not None:
            self._used(session_id, session)
            return
        self._sessions[session_id] = _Session(self._clock(), on_close)
        self._opened_total += 1

    def _used(self, session_id: str, session: _Session) -> None:
        session.last_used = self._clock()
        self._sessions.move_to_end(session_id)

    def touch(self, session_id: str) -> None:
        """
        Mark session *session_id* as used now, restarting its idle time.

        Args:
            session_id: An open session's id.

        Raises:
            KeyError: If no such session is open.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise KeyError(f"no open session {session_id!r}")
        self._used(session_id, session)

    async def close(self, session_id: str) -> None:
        """
        Close session *session_id* and await its ``on_close``; unknown ids are a no-op.

        Errors from ``on_close`` are logged (logger ``resource_supervisor.sessions``),
        not raised. Closing a session that is in use is allowed: the block using it
        ends without error and does not reopen it.

        Args:
            session_id: The session to close.

        Cancellation:
            The session is removed before anything is awaited. ``on_close`` runs
            shielded from cancellation (under ``close_timeout``), so the session's
            resources are freed even when the caller is cancelled; the cancellation
            is raised once it returns. An unknown id still checks for cancellation.
        """
        session = self._sessions.pop(session_id, None)
        if session is not None:
            if session.in_use:
                self._in_use -= 1
            await self._run_on_close(session_id, session)
        await checkpoint_if_cancelled()

    @contextlib.asynccontextmanager
    async def session(
        self, session_id: str, *, on_close: Callable[[str], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        """
        Use session *session_id* for the duration of the block, opening it if needed.

        While inside, the session is never evicted. Leaving the block (normally, by
        an error or by cancellation) does not close the session: it touches it and
        releases it, so a conversation spans requests until it idles out or is
        closed.

        Args:
            session_id: The session's id.
            on_close: As for :meth:`open`.

        Returns:
            An async context manager.

        Raises:
            SupervisorClosedError: If the registry was closed.
        """
        self.open(session_id, on_close=on_close)
        session = self._sessions[session_id]
        session.in_use += 1
        if session.in_use == 1:
            self._in_use += 1
        try:
            yield
        finally:
            session.in_use -= 1
            current = self._sessions.get(session_id)
            if current is session:
                if session.in_use == 0:
                    self._in_use -= 1
                self._used(session_id, session)

    async def cleanup(self, request: CleanupRequest) -> None:
        """
        Evict sessions idle longer than the TTL (``aggressive_ttl`` when aggressive).

        Sessions in use are never evicted. The evicted sessions' ``on_close``
        callbacks run concurrently, each under ``close_timeout``; their errors are
        logged, not raised.

        Args:
            request: The cleanup request; only ``aggressive`` is used.

        Cancellation:
            The idle sessions are removed before anything is awaited, so a cancelled
            call still evicts them. Their ``on_close`` callbacks run shielded (each
            under ``close_timeout``); the cancellation is raised once they return.
        """
        ttl = self._aggressive_ttl if request.aggressive else self._ttl
        evicted = self._take_idle(ttl)
        if evicted:
            logger.info(
                "evicted %d idle sessions (%s cleanup)",
                len(evicted),
                "aggressive" if request.aggressive else "normal",
            )
        await self._close_all(evicted)
        await checkpoint_if_cancelled()

    def expire(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """
        Remove the sessions idle longer than the TTL, whatever the pressure.

        Cheap enough to call often: it looks only at the least recently used
        sessions, up to the first one still within the TTL. The supervisor calls it
        after every sample and runs the returned callable in its task group.

        Returns:
            ``None`` when no expired session has an ``on_close``; else an async
            callable that runs their ``on_close`` callbacks concurrently (each
            shielded, under ``close_timeout``, errors logged).
        """
        expired = self._take_idle(self._ttl)
        if not expired:
            return None
        logger.info("expired %d sessions idle longer than %g s", len(expired), self._ttl)
        closing = [(sid, session) for sid, session in expired if session.on_close is not None]
        return functools.partial(self._close_all, closing) if closing else None

    def _take_idle(self, ttl: float) -> list[tuple[str, _Session]]:
        """Remove and return the sessions not in use and idle longer than *ttl*."""
        now = self._clock()
        taken: list[tuple[str, _Session]] = []
        for session_id, session in self._sessions.items():
            if now - session.last_used <= ttl:
                break  # every later session was used more recently
            if session.in_use == 0:
                taken.append((session_id, session))
        for session_id, _ in taken:
            del self._sessions[session_id]
        self._evicted_total += len(taken)
        return taken

    def metrics(self) -> dict[str, MetricValue]:
        """The snapshot's session keys (a :class:`~._contributions.MetricsContributor`)."""
        return {
            "active_sessions_rag": len(self._sessions),
            "sessions_evicted_total": self._evicted_total,
            "sessions_close_failures_total": self._close_failures,
        }

    def statistics(self) -> SessionStatistics:
        """Return the current counters (see :class:`SessionStatistics`)."""
        return SessionStatistics(
            active=len(self._sessions),
            in_use=self._in_use,
            opened_total=self._opened_total,
            evicted_total=self._evicted_total,
            close_failures=self._close_failures,
        )

    async def aclose(self) -> None:
        """
        Close every session, in use or not, and refuse new ones. Idempotent.

        ``on_close`` callbacks run concurrently, each under ``close_timeout``; errors
        are logged. Blocks still using a session end without error. Later
        :meth:`open` and :meth:`session` calls raise :exc:`SupervisorClosedError`.

        Cancellation:
            The registry is closed and emptied before anything is awaited; the
            callbacks run shielded (each under ``close_timeout``), then the
            cancellation is raised.
        """
        self._closed = True
        sessions = list(self._sessions.items())
        self._sessions.clear()
        self._in_use = 0
        await self._close_all(sessions)
        await checkpoint_if_cancelled()

    async def _close_all(self, sessions: list[tuple[str, _Session]]) -> None:
        if not sessions:
            return
        async with anyio.create_task_group() as tg:
            for session_id, session in sessions:
                tg.start_soon(self._run_on_close, session_id, session)

    async def _run_on_close(self, session_id: str, session: _Session) -> None:
        on_close = session.on_close
        if on_close is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout) as scope:
            try:
                await on_close(session_id)
            except BaseException as exc:
                # Anything a callback raises (KeyboardInterrupt, SystemExit, its own
                # CancelledError) is its failure; only our timeout propagates.
                if must_propagate(exc):
                    raise
                absorb(exc)
                self._close_failures += 1
                logger.warning("on_close of session %r failed", session_id, exc_info=exc)
        if scope.cancelled_caught:
            self._close_failures += 1
            logger.warning(
                "on_close of session %r did not finish within %g s",
                session_id,
                self._close_timeout,
            )
