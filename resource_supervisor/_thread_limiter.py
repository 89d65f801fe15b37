"""
anyio's default thread limiter, which FastAPI and Starlette use for ``def``
endpoints, sync dependencies and ``run_in_threadpool``: its size from settings,
shrunk under pressure and restored afterwards, shown in every snapshot.

Covers: :class:`DefaultThreadLimiter` (apply on entry, follow the pressure level,
restore on exit, metrics) and :func:`governed_tokens`, the pure sizing rule.
Does not cover: the thread lane, which has its own limiter and never uses this one
(:mod:`.broker._threads`), or admission of requests (:mod:`._admission`).

The limiter is anyio's per-event-loop default (``current_default_thread_limiter()``,
40 tokens unless changed). Shrinking it never interrupts a running thread: calls
already holding a token finish; new ones wait until fewer than the new total run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio.to_thread

from ._snapshot import PressureLevel

if TYPE_CHECKING:
    from ._snapshot import MetricValue

__all__ = ("DefaultThreadLimiter", "governed_tokens")

# Share of the configured tokens kept at each level. Halving at WARNING and keeping a
# quarter at CRITICAL bounds the memory that many blocked sync requests can pin
# (stacks, request bodies) while still serving them.
SHARE: Final = {PressureLevel.NORMAL: 1.0, PressureLevel.WARNING: 0.5, PressureLevel.CRITICAL: 0.25}


def governed_tokens(base: int, level: PressureLevel) -> int:
    """
    Return the limiter's size for *level* given its configured size *base*. Pure.

    Args:
        base: Tokens at NORMAL (at least 1).
        level: The pressure level.

    Returns:
        ``base`` at NORMAL, half of it at WARNING, a quarter at CRITICAL (rounded
        down), never below 1.
    """
    return max(1, int(base * SHARE[level]))


class DefaultThreadLimiter:
    """
    Sizes anyio's default thread limiter of the running loop for one supervisor.

    Args:
        tokens: Tokens to set on :meth:`apply` (``None`` = keep its current size).
        govern: Follow the pressure level (:func:`governed_tokens`).
    """

    def __init__(self, *, tokens: int | None, govern: bool) -> None:
        self._tokens = tokens
        self._govern = govern
        self._limiter: anyio.CapacityLimiter | None = None
        self._original: float | None = None
        self._base = 0
        self._level = PressureLevel.NORMAL

    def apply(self) -> None:
        """On the supervisor's loop, at entry: take the limiter and set its size."""
        limiter = anyio.to_thread.current_default_thread_limiter()
        self._limiter = limiter
        self._original = limiter.total_tokens
        if self._tokens is not None:
            limiter.total_tokens = self._tokens
        total = limiter.total_tokens
        self._base = int(total) if total != float("inf") else 0
        self._resize()

    def set_pressure(self, level: PressureLevel) -> None:
        """
        Follow *level* when governing: shrink at WARNING and CRITICAL, restore at NORMAL.

        Args:
            level: The level just graded.
        """
        self._level = level
        self._resize()

    def _resize(self) -> None:
        limiter = self._limiter
        if limiter is None or not self._govern or self._base < 1:
            return
        size = governed_tokens(self._base, self._level)
        if limiter.total_tokens != size:
            limiter.total_tokens = size

    def restore(self) -> None:
        """At exit: give the limiter back the size it had before :meth:`apply`. Idempotent."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None and self._original is not None:
            limiter.total_tokens = self._original

    def metrics(self) -> dict[str, MetricValue]:
        """
        Return ``default_thread_limiter_busy`` (tokens borrowed now) and
        ``default_thread_limiter_total`` (its size now, ``inf`` if unbounded); empty
        before :meth:`apply`.

        Returns:
            The two metrics.
        """
        limiter = self._limiter
        if limiter is None:
            return {}
        return {
            "default_thread_limiter_busy": limiter.borrowed_tokens,
            "default_thread_limiter_total": limiter.total_tokens,
        }
