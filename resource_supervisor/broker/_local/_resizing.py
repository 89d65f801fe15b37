"""
Resizing the local process lane: the sizing rules applied, now and over time.

Covers: :class:`LaneResizing`, the part of :class:`._lane.ProcessLane` that
counts its slots, asks the pure rules how many workers it wants
(:func:`._sizing.target_workers`, with the memory headroom of
:func:`._headroom.startable_workers` and the container's CPU tokens of
:mod:`._cpu_budget`), starts and retires slots accordingly, and runs the
maintainer task that resizes again when an idle timeout expires, pressure has
settled, or the CPU budget may have changed. Does not cover: the rules themselves
(:mod:`._sizing`, :mod:`._headroom`, :func:`._cpu_budget.tokens_wanted`, pure),
starting or retiring one slot (:mod:`._slot_life`) or pressure levels
(:meth:`._lane.ProcessLane.set_pressure`).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from ..._snapshot import PressureLevel
from ._cpu_budget import tokens_wanted
from ._headroom import startable_workers
from ._sizing import target_workers
from ._slot import LIVE_STATES, Slot, SlotState

if TYPE_CHECKING:
    import asyncio
    import collections
    from collections.abc import Callable, Coroutine

    from ..._config import ConcurrencySettings
    from ._cpu_budget import CpuBudget
    from ._headroom import MemoryHeadroom
    from ._slot import Call

__all__ = ("BUDGET_POLL_SECONDS", "LaneResizing")

BUDGET_POLL_SECONDS: Final = 0.1
"""How often a lane sharing the container's CPU budget looks for demand or free tokens."""


class _Lane(Protocol):
    """What these methods use of the lane."""

    _settings: ConcurrencySettings
    _max_workers: int
    _budget: CpuBudget | None
    _headroom: MemoryHeadroom
    _clock: Callable[[], float]
    _settle_seconds: float
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool
    _queue: collections.deque[Call]
    _slots: list[Slot]
    _level: PressureLevel
    _calm_since: float | None
    _target: int
    _sleep_until: float
    _wakeup: asyncio.Event | None

    def _hold_tokens(self, live: int, idle: int, starting: int) -> tuple[int, int]: ...
    def _next_deadline(self) -> float: ...
    def _resize(self) -> None: ...
    def _dispatch(self) -> None: ...
    def _retire(self, slot: Slot) -> None: ...
    def _spawn(
        self, coro: Coroutine[object, object, None], *, maintainer: bool = False
    ) -> None: ...
    async def _start_slot(self, slot: Slot) -> None: ...


class LaneResizing:
    """Mixin of :class:`._lane.ProcessLane`: how many slots, applied."""

    # -- sizing ------------------------------------------------------------------------
    def _live_count(self: _Lane) -> int:
        return sum(1 for s in self._slots if s.state in LIVE_STATES)

    def _resize(self: _Lane) -> None:
        """Apply the sizing policy: start slots, retire idle ones."""
        if self._closed or self._loop is None:
            return
        now = self._clock()
        live = [s for s in self._slots if s.state in LIVE_STATES]
        idle = [s for s in live if s.state is SlotState.IDLE]
        starting = sum(1 for s in live if s.state is SlotState.STARTING)
        timeout = self._settings.idle_timeout
        expired = [s for s in idle if now - s.idle_since >= timeout]
        calm_for = math.inf if self._calm_since is None else now - self._calm_since
        if self._level > PressureLevel.NORMAL:
            calm_for = 0.0
        decide = functools.partial(
            target_workers,
            max_workers=self._max_workers,
            queued=len(self._queue),
            busy=len(live) - len(idle) - starting,
            starting=starting,
            live=len(live),
            idle_expired=len(expired),
            level=self._level,
            calm_for=calm_for,
            settle_seconds=self._settle_seconds,
        )
        token_room: int | None = None
        if self._budget is not None:  # the container's CPU budget (multi-process mode)
            token_room, surplus = self._hold_tokens(len(live), len(idle), starting)
            if surplus:  # another process waits: give idle workers back, to a fair share
                retire = min(len(idle), max(len(expired), surplus))
                decide = functools.partial(decide, idle_expired=retire)
        decision = decide()
        if decision.start:  # read the memory headroom only when it matters
            worker_bytes = max((s.rss_bytes for s in live), default=0)
            startable = startable_workers(
                self._headroom.available_bytes(),
                worker_bytes,
                live=len(live),
                starting=starting,
            )
            if token_room is not None:
                startable = token_room if startable is None else min(startable, token_room)
            decision = decide(startable=startable)
        self._target = decision.target
        for _ in range(decision.start):
            slot = Slot()
            self._slots.append(slot)
            self._spawn(self._start_slot(slot))
        idle.sort(key=lambda s: s.idle_since)
        for slot in idle[: decision.retire_idle]:
            self._retire(slot)

    def _hold_tokens(self: _Lane, live: int, idle: int, starting: int) -> tuple[int, int]:
        """
        Hold the CPU tokens this lane wants; return (more workers allowed, tokens to
        give back to waiting processes). A retiring worker keeps its token until its
        process is gone.
        """
        assert self._budget is not None
        retiring = sum(1 for s in self._slots if s.state is SlotState.RETIRING)
        held = self._budget.hold(
            retiring
            + tokens_wanted(
                live=live,
                busy=live - idle - starting,
                starting=starting,
                queued=len(self._queue),
                max_workers=self._max_workers,
            )
        )
        return max(0, held - live - retiring), self._budget.surplus() if idle else 0

    def _next_deadline(self: _Lane) -> float:
        """Seconds until the sizing may change by itself (an idle timeout or settling)."""
        now = self._clock()
        delays = [
            s.idle_since + self._settings.idle_timeout - now
            for s in self._slots
            if s.state is SlotState.IDLE
        ]
        if self._budget is not None and (delays or self._queue):
            delays.append(BUDGET_POLL_SECONDS)  # peers' demand, or a token coming free
        if self._calm_since is not None and now - self._calm_since < self._settle_seconds:
            delays.append(self._calm_since + self._settle_seconds - now)
        return max(0.0, min(delays, default=math.inf))

    async def _maintain(self: _Lane) -> None:
        assert self._wakeup is not None
        while not self._closed:
            self._wakeup.clear()
            self._resize()
            self._dispatch()
            delay = min(self._next_deadline(), 3600.0)
            self._sleep_until = self._clock() + delay
            with anyio.move_on_after(delay):
                await self._wakeup.wait()
            self._sleep_until = -math.inf
