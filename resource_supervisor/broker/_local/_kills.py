"""
Cancellation, timeouts and kills of the local process lane.

Covers: :class:`LaneKills`, the part of :class:`._lane.ProcessLane` that acts
when a caller gives up (a cancelled call, an expired ``timeout=``), that kills a
worker, and that kills the largest worker at CRITICAL pressure. Does not cover:
the atomic decision whether a handed-over call is withdrawn or killed
(:mod:`._stopping`), a worker's death once seen (:mod:`._slot_life`), or
measuring worker memory and the OOM-kill counter (:mod:`._worker_memory`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Final, Protocol

from ..._exceptions import CallTimeoutError
from ._recycling import rss_bytes
from ._slot import SlotState
from ._stopping import Stop, stop_call
from ._worker_memory import memory_victim

if TYPE_CHECKING:
    import asyncio
    import collections

    from ._launcher import SlotLauncher
    from ._slot import Call, Slot
    from ._stats import LaneCounters

__all__ = ("LaneKills",)

_logger = logging.getLogger("resource_supervisor.broker")

_STOP_RETRY_SECONDS: Final = 0.002
_STOP_TRIES: Final = 500
"""Stopping a call waits at most about a second for its worker's lock (see :mod:`._stopping`)."""


class _Lane(Protocol):
    """What these methods use of the lane."""

    _loop: asyncio.AbstractEventLoop | None
    _closed: bool
    _queue: collections.deque[Call]
    _slots: list[Slot]
    _counts: LaneCounters
    _launcher: SlotLauncher

    def _on_readable(self, slot: Slot) -> None: ...
    def _requeue(self, calls: list[Call]) -> None: ...
    def _dispatch(self) -> None: ...
    def _resize(self) -> None: ...
    def _cancel(self, call: Call) -> None: ...
    def _on_timeout(self, call: Call) -> None: ...
    def _catch_up(self, slot: Slot) -> None: ...
    def _stop(self, slot: Slot, call: Call, *, kill: bool, reason: str, tries: int = 0) -> None: ...
    def _retry_stop(self, slot: Slot, call: Call, kill: bool, reason: str, tries: int) -> None: ...  # noqa: FBT001
    def _kill(self, slot: Slot, reason: str) -> None: ...


class LaneKills:
    """Mixin of :class:`._lane.ProcessLane`: giving up calls and killing workers."""

    # -- cancellation and timeouts ----------------------------------------------------
    def _cancel(self: _Lane, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        slot = call.slot
        if slot is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(call)
            return
        self._stop(slot, call, kill=call.kill_on_cancel, reason="cancelled")

    def _on_timeout(self: _Lane, call: Call) -> None:
        call.timer = None
        if call.future.done() or call.timeout is None:
            return
        slot = call.slot
        if slot is not None:
            self._catch_up(slot)  # an outcome already written wins over the timer
            if call.future.done():
                return
        self._counts.timeouts += 1
        self._counts.failed += 1
        call.future.set_exception(CallTimeoutError(call.function, call.timeout))
        if call.slot is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(call)
        else:
            self._stop(call.slot, call, kill=True, reason="timeout")

    def _catch_up(self: _Lane, slot: Slot) -> None:
        """Deliver the outcomes the slot's worker has written and not yet been read."""
        if slot.state is SlotState.BUSY:
            self._on_readable(slot)

    def _stop(
        self: _Lane, slot: Slot, call: Call, *, kill: bool, reason: str, tries: int = 0
    ) -> None:
        """Withdraw a handed-over call, or kill its worker only while it runs it."""
        self._catch_up(slot)
        if call.slot is not slot or slot.state is not SlotState.BUSY:
            return  # delivered, requeued, or its worker is already gone
        outcome = stop_call(slot, call, kill=kill)
        if outcome is Stop.UNDECIDED:
            assert self._loop is not None
            if tries < _STOP_TRIES:
                self._loop.call_later(
                    _STOP_RETRY_SECONDS, self._retry_stop, slot, call, kill, reason, tries + 1
                )
            elif kill:  # the worker has held its lock for a second: it is stuck or dying
                self._kill(slot, reason)
        elif outcome is Stop.KILLED:
            slot.mark_killed(reason)
            # flagged under the lock: they never start, so they run elsewhere
            self._requeue(slot.withdraw_after(call))
            self._dispatch()
            if self._queue:
                self._resize()

    def _retry_stop(
        self: _Lane,
        slot: Slot,
        call: Call,
        kill: bool,  # noqa: FBT001 - positional for call_later
        reason: str,
        tries: int,
    ) -> None:
        if not self._closed:
            self._stop(slot, call, kill=kill, reason=reason, tries=tries)

    def _kill(self: _Lane, slot: Slot, reason: str) -> None:
        if slot.state in (SlotState.DEAD, SlotState.KILLED):
            return
        if slot.state is SlotState.STARTING:
            slot.kill_reason = reason  # the start task sees it and shuts the slot down
            return
        slot.mark_killed(reason)
        self._launcher.kill(slot)  # kill_workers() where the standard library has it

    def _relieve_memory(self: _Lane) -> None:
        """At CRITICAL: kill the largest worker when it holds more memory than the service."""
        started = [s for s in self._slots if s.state in (SlotState.IDLE, SlotState.BUSY)]
        victim = memory_victim(
            [(i, s.rss_bytes) for i, s in enumerate(started) if s.pid], rss_bytes(os.getpid())
        )
        if victim is None:
            return
        slot = started[victim]
        self._counts.memory_kills += 1
        slot.death_reason = "memory_pressure"
        _logger.warning(
            "process lane: killing worker %d (%d MiB resident, more than the service) "
            "at CRITICAL memory pressure",
            slot.pid,
            slot.rss_bytes >> 20,
        )
        self._kill(slot, "memory_pressure")
