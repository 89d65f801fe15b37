"""
Isolation of participants: the code users plug into a supervisor.

Covers: telling what a participant raised apart from what must propagate
(:func:`must_propagate`), absorbing the rest (:func:`absorb`), and calling sync
participants in daemon threads (:func:`run_in_daemon_thread`). Participants are
metrics providers, cleanup handlers, caches registered with the memory advisor,
session ``on_close`` callbacks and custom metric sources. Each may raise anything,
``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` and ``CancelledError``
included; each such raise is recorded and counted by its caller and never stops
the supervisor. Does not cover: timeouts and counting (the callers:
:mod:`._sampler`, :mod:`._cleanup`, :mod:`._sessions`, :mod:`._memory`,
:mod:`._supervisor`).

What still propagates, by case:

=================================================  ===================================
raised in a participant                              what happens
=================================================  ===================================
cancellation of a scope the caller runs in           propagates (the caller's own timeout,
(the effective deadline is ``-inf``)                 or the supervisor shutting down)
``CancelledError`` with no such scope cancelled      absorbed: the participant cancelled
(it raised one, or cancelled its own task)           itself; its task is un-cancelled
``KeyboardInterrupt`` on the main thread while       propagates: that is how a real Ctrl-C
Python's default SIGINT handler is installed         shows there, and Ctrl-C must stop the
                                                     service
any other exception or ``BaseException``             absorbed
=================================================  ===================================

Under ``asyncio.run``, ``anyio.run`` and uvicorn, SIGINT has a handler that cancels
the main task, so a real Ctrl-C arrives as a cancellation and every
``KeyboardInterrupt`` raised by a participant is the participant's own. A
``KeyboardInterrupt`` raised by a sync participant in a worker thread is never a
Ctrl-C (signals are delivered to the main thread): callers pass ``in_thread=True``.

Why daemon threads for sync participants: a provider or handler that never returns
is abandoned at its timeout, and a non-daemon thread (anyio's worker threads are)
would keep the interpreter from exiting after the service stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
from typing import TYPE_CHECKING, TypeVar, cast

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("absorb", "describe", "must_propagate", "run_in_daemon_thread")

T = TypeVar("T")


def must_propagate(exc: BaseException, *, in_thread: bool = False) -> bool:
    """
    Whether *exc*, raised by a participant, must propagate instead of being absorbed.

    Call it in the ``except BaseException`` block, in the task that ran the
    participant (see the module docstring for the cases).

    Args:
        exc: What the participant raised.
        in_thread: The participant ran in a worker thread (so a
            ``KeyboardInterrupt`` cannot be a Ctrl-C).
    """
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return anyio.current_effective_deadline() == -math.inf
    if isinstance(exc, KeyboardInterrupt) and not in_thread:
        return (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
    return False


def absorb(exc: BaseException) -> None:
    """
    Undo what absorbing *exc* leaves behind: a participant that cancelled its own
    asyncio task left a pending cancellation request on it, which would cancel the
    caller at its next await.
    """
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # pragma: no cover - not on an asyncio loop
            return
        if task is not None:
            while task.cancelling():
                task.uncancel()


def describe(exc: BaseException) -> str:
    """``"TypeName: message"`` (or just the type name when the message is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_in_daemon_thread(func: Callable[[], T]) -> T:
    """
    Call ``func()`` in a new daemon thread and return its result.

    The thread is a daemon, so one that never returns does not keep the interpreter
    alive. What *func* raises, ``BaseException`` included, is raised here.

    Cancellation:
        Abandons the thread at once: the caller raises the cancellation and the
        thread runs on unobserved until *func* returns.
    """
    loop = asyncio.get_running_loop()
    # The outcome travels as a value, and an exception is raised here, in this
    # frame: set on the future, a GeneratorExit would be thrown into the awaiting
    # task, and CPython then closes the coroutines it awaits instead of raising it
    # where the caller can catch it.
    future: asyncio.Future[tuple[bool, object]] = loop.create_future()

    def settle(outcome: tuple[bool, object]) -> None:
        if not future.done():  # else abandoned
            future.set_result(outcome)

    def main() -> None:
        try:
            outcome: tuple[bool, object] = (True, func())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (False, exc)
        # RuntimeError: the loop closed while the call ran; nobody waits for it
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    thread = threading.Thread(target=main, name="resource-supervisor participant", daemon=True)
    thread.start()
    ok, value = await future
    if not ok:
        assert isinstance(value, BaseException)
        try:
            raise value
        finally:
            del value  # no frame <-> traceback cycle
    return cast("T", value)
