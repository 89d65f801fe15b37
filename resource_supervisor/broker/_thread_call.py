"""
One call of the thread lane: what runs, in which context, and its outcome.

Covers: :class:`ThreadCall` and the states it moves through (:data:`QUEUED`,
:data:`RUNNING`, :data:`DROPPED`); every move happens under the lane's lock.
Does not cover: who moves it: the caller and :meth:`._threads.ThreadLane.aclose`
(:mod:`._threads`), the lane threads that run it and hand its outcome back to the
loop (:mod:`._thread_workers`).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ("DROPPED", "QUEUED", "RUNNING", "ThreadCall")

# Call states; every transition happens under the lane's lock.
QUEUED: Final = 0  # in the queue, not taken by a worker
RUNNING: Final = 1  # taken by a worker; it will run to the end
DROPPED: Final = 2  # cancelled while queued, or failed by aclose(); never runs


class ThreadCall:
    """One queued call and, once it ran, its outcome."""

    __slots__ = (
        "abandoned",
        "args",
        "closed_out",
        "context",
        "error",
        "finished",
        "func",
        "future",
        "state",
        "value",
    )

    def __init__(
        self,
        func: Callable[..., object],
        args: tuple[object, ...],
        future: asyncio.Future[None],
    ) -> None:
        self.func = func
        self.args = args
        self.context = contextvars.copy_context()
        self.future = future
        self.state = QUEUED
        self.finished = False  # outcome delivered on the event loop
        self.abandoned = False  # its caller left while it ran (loop thread only)
        self.closed_out = False  # still running when aclose() gave up on it
        self.value: object = None
        self.error: BaseException | None = None
