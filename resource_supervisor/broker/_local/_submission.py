"""
Submission to the local process lane: from a caller's call to the lane's queue.

Covers: :class:`LaneSubmission`, the part of :class:`._lane.ProcessLane` that
checks the caller's loop and process, pickles the call, admits it or refuses it
under pressure (:func:`._sizing.admits`, pure), arms its timeout, queues it and
waits for its outcome, handing a cancellation to :mod:`._kills`. Does not
cover: the queue's dispatch to slots and the sizing it triggers (:mod:`._lane`,
:mod:`._resizing`), pickling itself (:mod:`.._pickling`) or outcomes
(:mod:`._delivery`).

Pickling: a call is pickled on the event loop when its arguments are estimated
below :data:`.._pickling.OFFLOAD_BYTES` (a few microseconds, cheaper than a thread
handoff); bigger ones are pickled in a worker thread with their big buffers
written to a temporary file in pieces, so the loop is not held (see
:mod:`.._pickling`). Either way an unpicklable call fails before it is queued.
Outcomes come back on the slot's result pipe whatever their size: up to 64 KiB
they are decoded on the loop, bigger ones are read and decoded in a thread
(:mod:`._delivery`, :mod:`._big_frames`).

Loops and processes: use the lane from one event loop. A call from another loop
is refused before it is queued, and so is a call in a child forked from the
service (:mod:`._fork_guard`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from ..._exceptions import OverloadedError, SupervisorClosedError
from .._pickling import (
    OFFLOAD_BYTES,
    describe_callable,
    discard_spill,
    estimate_call_bytes,
    pickle_call,
    pickle_call_spilled,
    prepare_call,
)
from ._sizing import admits
from ._slot import Call

if TYPE_CHECKING:
    import collections
    from collections.abc import Callable

    from ..._config import ConcurrencySettings
    from ..._snapshot import PressureLevel
    from ._headroom import MemoryHeadroom
    from ._stats import LaneCounters

__all__ = ("LANE", "LaneSubmission")

LANE: Final = "process lane"
"""What :class:`SupervisorClosedError` names when the lane is closed."""


class _Lane(Protocol):
    """What these methods use of the lane."""

    _settings: ConcurrencySettings
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool
    _forked: bool
    _queue: collections.deque[Call]
    _level: PressureLevel
    _counts: LaneCounters
    _by_value: Callable[[object], bytes] | None
    _headroom: MemoryHeadroom

    def _check_caller(self) -> asyncio.AbstractEventLoop: ...
    async def _submit(
        self,
        func: Callable[..., object],
        args: tuple[object, ...],
        *,
        timeout: float | None,  # noqa: ASYNC109 - see ProcessLane.run()
        kill_on_cancel: bool,
    ) -> object: ...
    async def _enqueue(
        self,
        func: Callable[..., object],
        payload: bytes,
        timeout: float | None,  # noqa: ASYNC109 - see ProcessLane.run()
        *,
        kill_on_cancel: bool,
    ) -> object: ...
    def _ensure_started(self) -> asyncio.AbstractEventLoop: ...
    def _on_timeout(self, call: Call) -> None: ...
    def _cancel(self, call: Call) -> None: ...
    def _dispatch(self) -> None: ...
    def _resize(self) -> None: ...


class LaneSubmission:
    """Mixin of :class:`._lane.ProcessLane`: a call checked, pickled, admitted and queued."""

    def _check_caller(self: _Lane) -> asyncio.AbstractEventLoop:
        """The caller's loop, refused if the lane belongs to another loop or process."""
        if self._forked:
            raise RuntimeError(
                "this process lane belongs to the process that forked this one; "
                "a forked child must create its own lane or supervisor"
            )
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise RuntimeError(
                "the process lane was started on another event loop; call it only "
                "from the loop it started on (the call was not queued)"
            )
        return loop

    async def _run_chunk(
        self: _Lane, func: Callable[..., object], args: tuple[object, ...]
    ) -> object:
        return await self._submit(func, args, timeout=None, kill_on_cancel=False)

    async def _submit(
        self: _Lane,
        func: Callable[..., object],
        args: tuple[object, ...],
        *,
        timeout: float | None,  # noqa: ASYNC109 - see ProcessLane.run()
        kill_on_cancel: bool,
    ) -> object:
        self._check_caller()
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise SupervisorClosedError(LANE)
        if not self._headroom.opened:  # the first call: locating the cgroup reads /proc
            await anyio.to_thread.run_sync(self._headroom.open)
        spill: str | None = None
        sent, sent_args = prepare_call(func, args, self._by_value)  # unchanged for pickle
        if estimate_call_bytes(func, args) <= OFFLOAD_BYTES:
            payload = pickle_call(sent, sent_args)  # cheaper here than a thread handoff
        else:
            payload, spill = await anyio.to_thread.run_sync(pickle_call_spilled, sent, sent_args)
        try:
            return await self._enqueue(func, payload, timeout, kill_on_cancel=kill_on_cancel)
        finally:
            if spill is not None:  # usually gone already: the worker removes it once read
                with anyio.CancelScope(shield=True):  # a file system call: not on the loop
                    await anyio.to_thread.run_sync(discard_spill, spill)

    async def _enqueue(
        self: _Lane,
        func: Callable[..., object],
        payload: bytes,
        timeout: float | None,  # noqa: ASYNC109 - see ProcessLane.run()
        *,
        kill_on_cancel: bool,
    ) -> object:
        self._check_caller()  # again: the loop may have been set while pickling
        if self._closed:
            raise SupervisorClosedError(LANE)
        if not admits(
            level=self._level, queued=len(self._queue), queue_limit=self._settings.queue_limit
        ):
            self._counts.refused += 1
            raise OverloadedError(
                "process", len(self._queue), self._settings.queue_limit, self._level.name
            )
        loop = self._ensure_started()
        call = Call(payload, describe_callable(func), timeout, loop.create_future(), kill_on_cancel)
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._on_timeout, call)
        self._queue.append(call)
        self._dispatch()
        if self._queue:
            self._resize()
        try:
            return await call.future
        except asyncio.CancelledError:
            self._cancel(call)
            raise
