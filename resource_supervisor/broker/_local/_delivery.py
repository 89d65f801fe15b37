"""
Outcomes of the local process lane: from a slot's result pipe to the caller.

Covers: :class:`LaneDelivery`, the part of :class:`._lane.ProcessLane` that
submits a worker's serving loop, reads the outcome frames its worker writes,
settles the callers' futures, fails the calls a dead worker lost, and decides
what a slot does once its batch is done (take the next one, go idle, retire for
recycling or under pressure). Does not cover: the frames themselves
(:mod:`._protocol`, read by :meth:`._slot.Slot.read_outcomes`), reading a big
frame in a thread (:mod:`._big_frames`), when a slot is due for
recycling (:mod:`._recycling`, pure), a worker's death once seen
(:mod:`._slot_life`) or giving up calls (:mod:`._kills`).

Fast path (see :mod:`._protocol` for the wire format, :mod:`._worker` for the
worker): each worker runs a serving loop (one long executor item) that reads calls
from the slot's call pipe, which the lane writes on the loop, so no call goes
through the executor's threads and queues. Each outcome, of any size, comes back
as one length-prefixed frame on the slot's result pipe: a small one is read and
decoded on the event loop; when a frame's header announces a big one, the loop
stops watching the pipe, a thread reads and decodes the rest (:mod:`._big_frames`)
and the loop delivers it and watches the pipe again. The worker
publishes the number of the call it is running in shared memory. After a crash the
lane therefore knows which calls finished (delivered), which one was running
(fails with :class:`WorkerCrashedError`) and which never started (queued again,
first in line). No call runs twice. The executor still owns the worker: it reports
its death (the serving item breaks) and reaps it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

import anyio

from ..._exceptions import WorkerCrashedError
from ..._snapshot import PressureLevel
from . import _worker
from ._big_frames import read_big_frame
from ._protocol import Outcome
from ._recycling import recycle_due
from ._slot import SlotState

if TYPE_CHECKING:
    import asyncio
    import collections
    from collections.abc import Callable, Coroutine
    from concurrent.futures import Future

    from ..._config import ConcurrencySettings
    from ._protocol import FrameKind
    from ._slot import Call, Slot
    from ._stats import LaneCounters

__all__ = ("LaneDelivery",)


class _Lane(Protocol):
    """What these methods use of the lane."""

    _settings: ConcurrencySettings
    _clock: Callable[[], float]
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool
    _queue: collections.deque[Call]
    _level: PressureLevel
    _target: int
    _call_seconds: float | None
    _sleep_until: float
    _counts: LaneCounters

    def _serve(self, slot: Slot) -> bool: ...
    def _serve_done_threadsafe(self, slot: Slot, future: Future[None]) -> None: ...
    def _on_serve_done(
        self,
        slot: Slot,
        future: Future[None],
        broken: bool,  # noqa: FBT001
    ) -> None: ...
    def _on_readable(self, slot: Slot) -> None: ...
    def _drain(self, slot: Slot) -> bool: ...
    async def _read_big(
        self, slot: Slot, length: int, seq: int, kind: FrameKind, prefix: bytes
    ) -> None: ...
    def _spawn(
        self, coro: Coroutine[object, object, None], *, maintainer: bool = False
    ) -> None: ...
    def _deliver(self, slot: Slot, outcome: tuple[int, Outcome, float, object]) -> None: ...
    def _finish(self, call: Call, error: BaseException | None, value: object = None) -> bool: ...
    def _after_progress(self, slot: Slot) -> None: ...
    def _requeue(self, calls: list[Call]) -> None: ...
    def _fail_crashed(
        self, call: Call, exitcode: int | None, detail: str, reason: str | None = None
    ) -> None: ...
    def _slot_died(self, slot: Slot) -> None: ...
    def _retire(self, slot: Slot) -> None: ...
    def _stop_reading(self, slot: Slot) -> None: ...
    def _live_count(self) -> int: ...
    def _wake(self) -> None: ...
    def _dispatch(self) -> None: ...
    def _resize(self) -> None: ...


class LaneDelivery:
    """Mixin of :class:`._lane.ProcessLane`: outcomes to callers, and a slot's next step."""

    _call_seconds: float | None  # set here, declared by the lane

    # -- the serving loop --------------------------------------------------------------
    def _serve(self: _Lane, slot: Slot) -> bool:
        """Submit the worker's serving loop; False if the slot died instead."""
        assert slot.executor is not None
        try:
            future = slot.executor.submit(_worker.serve)
        except RuntimeError:  # BrokenProcessPool (a RuntimeError) or shut down
            self._slot_died(slot)
            return False
        slot.serving = future
        future.add_done_callback(lambda f: self._serve_done_threadsafe(slot, f))
        return True

    def _serve_done_threadsafe(self: _Lane, slot: Slot, future: Future[None]) -> None:
        # Runs in the executor's manager thread: hand the news to the loop.
        broken = future.cancelled() or future.exception() is not None
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._on_serve_done, slot, future, broken)

    def _on_serve_done(
        self: _Lane,
        slot: Slot,
        future: Future[None],
        broken: bool,  # noqa: FBT001
    ) -> None:
        if self._closed or slot.state in (SlotState.DEAD, SlotState.RETIRING):
            return
        if slot.serving is future:
            slot.serving = None  # the next batch submits the serving loop again
        self._drain(slot)
        if broken:
            self._slot_died(slot)
            return
        if slot.in_flight and slot.serving is None and slot.state is SlotState.BUSY:
            self._serve(slot)  # it went idle as a batch came: the batch waits in the pipe
            return
        self._after_progress(slot)

    # -- results -----------------------------------------------------------------------
    def _on_readable(self: _Lane, slot: Slot) -> None:
        if self._closed:
            self._stop_reading(slot)
            return
        if self._drain(slot):
            self._after_progress(slot)
        else:
            self._slot_died(slot)

    def _drain(self: _Lane, slot: Slot) -> bool:
        """
        Deliver every complete small frame on the slot's pipe and hand a big one to a
        thread; False at end of file.
        """
        outcomes, alive = slot.read_outcomes()
        for outcome in outcomes:
            self._deliver(slot, outcome)
        if alive and not slot.reading_big:
            big = slot.take_big_frame()
            if big is not None:
                assert self._loop is not None
                self._loop.remove_reader(slot.reader_fd)  # the thread reads until it is done
                self._spawn(self._read_big(slot, *big))
        return alive

    async def _read_big(
        self: _Lane, slot: Slot, length: int, seq: int, kind: FrameKind, prefix: bytes
    ) -> None:
        """Read and decode one big frame in a thread, deliver it, watch the pipe again."""
        with anyio.CancelScope(shield=True):  # the thread owns the pipe until it returns
            outcome, rest = await anyio.to_thread.run_sync(
                read_big_frame, slot.reader_fd, length, seq, kind, prefix
            )
        slot.reading_big = False
        slot.buffer[:0] = rest
        if outcome is not None:
            self._deliver(slot, outcome)
        if self._closed or slot.state in (SlotState.DEAD, SlotState.RETIRING):
            return
        if outcome is None or slot.dying:  # the worker is gone (it may have died mid-frame)
            self._slot_died(slot)
            return
        assert self._loop is not None
        self._loop.add_reader(slot.reader_fd, self._on_readable, slot)
        self._on_readable(slot)  # frames read past this one, and what came meanwhile

    def _deliver(self: _Lane, slot: Slot, outcome: tuple[int, Outcome, float, object]) -> None:
        seq, status, seconds, value = outcome
        while slot.in_flight and slot.in_flight[0].seq < seq:
            # cannot happen with in-order workers; never leave a caller waiting
            self._fail_crashed(slot.in_flight.popleft(), None, "lost by the worker")
        if not slot.in_flight or slot.in_flight[0].seq != seq:
            return
        call = slot.in_flight.popleft()
        call.slot = None
        if status is Outcome.SKIPPED:
            if not call.future.done():  # flagged by a kill that then did not happen
                self._requeue([call])
            return
        slot.calls_done += 1
        mean = self._call_seconds
        self._call_seconds = seconds if mean is None else mean + (seconds - mean) * 0.2
        if status is Outcome.OK:
            if self._finish(call, None, value):
                self._counts.completed += 1
        else:
            assert isinstance(value, BaseException)
            if self._finish(call, value):
                self._counts.failed += 1

    def _finish(self: _Lane, call: Call, error: BaseException | None, value: object = None) -> bool:
        """Settle the call's future unless it is already settled; True if this did."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.future.done():
            return False
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(value)
        return True

    def _after_progress(self: _Lane, slot: Slot) -> None:
        """A slot whose calls are all done becomes idle, or retires; then dispatch."""
        if slot.state is not SlotState.BUSY or slot.in_flight:
            self._dispatch()
            return
        settings = self._settings
        if recycle_due(
            calls_done=slot.calls_done,
            pid=slot.pid,
            max_tasks=settings.max_tasks_per_worker,
            max_rss_bytes=settings.worker_max_rss_bytes,
        ):
            self._counts.recycled += 1
            self._retire(slot)
        elif self._level > PressureLevel.NORMAL and self._live_count() > self._target:
            self._retire(slot)
        else:
            slot.mark_idle(self._clock())
            if self._sleep_until > slot.idle_since + settings.idle_timeout:
                self._wake()  # the maintainer must wake for this slot's idle timeout
        if self._queue:
            self._dispatch()
            if self._queue:
                self._resize()

    def _requeue(self: _Lane, calls: list[Call]) -> None:
        for call in reversed(calls):
            call.slot = None
            call.seq = -1
            if not call.future.done():
                self._queue.appendleft(call)

    def _fail_crashed(
        self: _Lane, call: Call, exitcode: int | None, detail: str, reason: str | None = None
    ) -> None:
        call.slot = None
        code, sig = (None, -exitcode) if exitcode is not None and exitcode < 0 else (exitcode, None)
        if self._finish(call, WorkerCrashedError(call.function, code, sig, detail, reason)):
            self._counts.failed += 1
