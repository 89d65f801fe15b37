"""
One worker slot of the local process lane: its state, its channel and its calls.

Covers: :class:`Call` (one queued or handed-over call), :class:`SlotState`,
:class:`Slot` (a single-worker ``ProcessPoolExecutor``, the pipes and progress
channel shared with its worker; every change of its state, checked against the
moves its life allows, :class:`SlotStateError` otherwise; sending a batch,
reading outcomes, withdrawing calls),
:func:`open_slot` and :func:`shutdown_slot` (blocking: start and stop a slot's
executor, from a worker thread), :func:`write_calls` (batch frames to the slot's call pipe,
non-blocking) and :func:`read_frames` (outcome frames from the slot's result
pipe). Does not cover: queueing, dispatching and sizing (:mod:`._lane`), the
worker's side (:mod:`._worker`), the wire format (:mod:`._protocol`) or the lane's forkserver
(:mod:`._forkserver`).

Progress tracking: a batch handed to a slot gets consecutive sequence numbers;
the worker stores the number of the call it starts in ``progress`` and writes one
frame per outcome. After a crash, outcomes read from the pipe are delivered, the
call whose number is in ``progress`` without an outcome was running, and higher
numbers never started (see :mod:`._worker` for why this is exactly-once).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import fcntl
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.forkserver import ensure_running as ensure_std_forkserver
from typing import TYPE_CHECKING, Final, Protocol

from . import _protocol, _worker
from ._forkserver import LaneForkServerContext
from ._mp_internals import check_internals, result_queue_writer, worker_process
from ._recycling import rss_bytes
from ._shared_progress import shared_progress

if TYPE_CHECKING:
    import asyncio
    import multiprocessing.context
    import multiprocessing.process
    from concurrent.futures import Future
    from multiprocessing.synchronize import Lock

    from ._lifeline import Lifeline
    from ._mp_internals import LaneInternals
    from ._protocol import Outcome

__all__ = (
    "Call",
    "OpenedSlot",
    "Slot",
    "SlotState",
    "SlotStateError",
    "open_slot",
    "read_frames",
    "shutdown_slot",
    "write_calls",
)

START_TIMEOUT: Final = 60.0
"""Seconds a new worker may take to answer its first submission."""
_READ_SIZE: Final = 65536
_PIPE_BYTES: Final = 1024 * 1024


@dataclass(eq=False, slots=True)
class Call:
    """One call: its pickled ``(func, args)``, its caller's future, where it runs."""

    payload: bytes
    function: str
    timeout: float | None
    future: asyncio.Future[object]
    kill_on_cancel: bool
    spill: str | None = None
    """Temporary file holding the call's big buffers (see :mod:`.._pickling`)."""
    seq: int = -1
    position: int = -1
    slot: Slot | None = None
    timer: asyncio.TimerHandle | None = None


class SlotState(enum.Enum):
    """Where a slot is in its life."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    KILLED = "killed"  # SIGKILL sent, death not yet seen
    RETIRING = "retiring"
    DEAD = "dead"


LIVE_STATES: Final = (SlotState.STARTING, SlotState.IDLE, SlotState.BUSY)
"""States of a slot that counts towards the lane's size."""

_MOVES: Final[dict[SlotState, frozenset[SlotState]]] = {
    SlotState.STARTING: frozenset({SlotState.IDLE, SlotState.KILLED, SlotState.DEAD}),
    SlotState.IDLE: frozenset(
        {SlotState.BUSY, SlotState.RETIRING, SlotState.KILLED, SlotState.DEAD}
    ),
    SlotState.BUSY: frozenset(
        {SlotState.IDLE, SlotState.RETIRING, SlotState.KILLED, SlotState.DEAD}
    ),
    SlotState.KILLED: frozenset({SlotState.DEAD}),
    SlotState.RETIRING: frozenset({SlotState.KILLED, SlotState.DEAD}),
    SlotState.DEAD: frozenset(),
}
"""Where a slot may go from each state: the whole of a slot's life."""


class SlotStateError(RuntimeError):
    """A slot was asked to move where its life does not go (a bug in the lane)."""


class _SharedInt(Protocol):  # typing shape of RawValue("q") and SharedInt
    value: int


class _SharedFlags(Protocol):  # typing shape of RawArray("b") and SharedFlags
    def __getitem__(self, index: int, /) -> int: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...


@dataclass(eq=False, slots=True)
class Slot:
    """A worker slot: one executor, one worker, the calls handed to it in order."""

    state: SlotState = SlotState.STARTING
    executor: ProcessPoolExecutor | None = None
    serving: Future[None] | None = None
    """The worker's :func:`._worker.serve` submission, while it runs."""
    process: multiprocessing.process.BaseProcess | None = None
    pid: int = 0
    reader_fd: int = -1
    writer_fd: int = -1
    """Write end of the call pipe (non-blocking)."""
    outgoing: bytearray = field(default_factory=bytearray)
    """Batch bytes the call pipe did not take yet."""
    progress: _SharedInt | None = None
    skip: _SharedFlags | None = None
    lock: Lock | None = None
    in_flight: collections.deque[Call] = field(default_factory=collections.deque)
    buffer: bytearray = field(default_factory=bytearray)
    next_seq: int = 0
    calls_done: int = 0
    idle_since: float = 0.0
    kill_reason: str | None = None
    crashed: bool = False
    rss_bytes: int = 0
    """The worker's resident memory when last measured (0 before)."""
    death_reason: str | None = None
    """Why the worker died, where known (``WorkerCrashedError.reason``)."""
    reading_big: bool = False
    """A thread is reading a big outcome frame from the result pipe (:mod:`._big_frames`)."""
    dying: bool = False
    """The worker's death was seen while a big frame was being read: handled after it."""

    # -- its life: every state change of a slot is one of these ---------------------
    def _move(self, state: SlotState) -> None:
        if state not in _MOVES[self.state]:
            raise SlotStateError(f"a {self.state.value} slot cannot become {state.value}")
        self.state = state

    def mark_idle(self, now: float) -> None:
        """Started, or done with its calls: it waits for a batch from *now* on."""
        self._move(SlotState.IDLE)
        self.idle_since = now

    def mark_killed(self, reason: str | None) -> None:
        """SIGKILL is sent for *reason* (``None``: the lane is closing, no reason kept)."""
        if reason is not None:
            self.kill_reason = reason
        self._move(SlotState.KILLED)

    def mark_retiring(self) -> None:
        """Its executor is being shut down on purpose."""
        self._move(SlotState.RETIRING)

    def mark_dead(self) -> None:
        """Its worker is gone (a second call is a no-op: deaths are seen by two paths)."""
        if self.state is not SlotState.DEAD:
            self._move(SlotState.DEAD)

    # -- its channel -----------------------------------------------------------------
    def send(self, batch: list[Call]) -> None:
        """
        Hand *batch* to this idle slot: it becomes busy and the batch frame waits in
        ``outgoing`` until :meth:`flush` writes it.

        Args:
            batch: Calls to run here in order, at most :data:`._protocol.MAX_BATCH`.
        """
        frame = self.hand_over(batch)
        self._move(SlotState.BUSY)
        self.outgoing += frame

    def flush(self) -> bool:
        """Write what the call pipe takes now; True when nothing waits (see :func:`write_calls`)."""
        return write_calls(self)

    def read_outcomes(self) -> tuple[list[tuple[int, Outcome, float, object]], bool]:
        """
        Read and decode every complete outcome frame on the result pipe (non-blocking).

        Returns:
            ``(seq, status, seconds, value)`` per small outcome in order, and False
            once the pipe reached end of file (the worker is gone). A big frame
            stays in ``buffer`` (see :meth:`take_big_frame`).
        """
        frames, alive = read_frames(self)
        return [_protocol.decode_frame(seq, data) for seq, data in frames], alive

    def take_big_frame(self) -> tuple[int, int, _protocol.FrameKind, bytes] | None:
        """
        Take the big frame ``buffer`` starts with, for a thread to read (see :mod:`._big_frames`).

        Returns:
            ``None`` when ``buffer`` does not start with a big frame's header; else
            its ``(payload length, seq, kind)`` and the bytes read past the header,
            which leave ``buffer``, and the slot is marked ``reading_big``.
        """
        big = _protocol.big_frame(self.buffer)
        if big is None:
            return None
        prefix = bytes(self.buffer[_protocol.OUTCOME_HEADER.size :])
        self.buffer.clear()
        self.reading_big = True
        return (*big, prefix)

    def withdraw_after(self, call: Call) -> list[Call]:
        """Take the calls handed over after *call* back (they will never start here)."""
        later = [c for c in self.in_flight if c.seq > call.seq]
        for c in later:
            self.in_flight.remove(c)
        return later

    def adopt(self, opened: OpenedSlot) -> None:
        """Take over a started executor; the pipes' parent ends become non-blocking fds."""
        self.executor = opened.executor
        self.process = opened.process
        self.pid = opened.pid
        self.progress = opened.progress
        self.skip = opened.skip
        self.lock = opened.lock
        self.reader_fd = os.dup(opened.reader.fileno())
        opened.reader.close()
        os.set_blocking(self.reader_fd, False)
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or over pipe-max-size
            # a big frame then moves in 1 MiB reads, not 64 KiB ones: fewer GIL handoffs
            fcntl.fcntl(self.reader_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.writer_fd = os.dup(opened.calls.fileno())
        opened.calls.close()
        os.set_blocking(self.writer_fd, False)

    def hand_over(self, batch: list[Call]) -> bytes:
        """
        Number *batch* for this slot, clear its withdrawal flags, add it to ``in_flight``.

        Args:
            batch: Calls to run here in order, at most :data:`._protocol.MAX_BATCH`.

        Returns:
            The batch frame for the call pipe (:func:`._protocol.encode_batch`).
        """
        assert self.skip is not None
        items: list[tuple[int, bytes]] = []
        for position, call in enumerate(batch):
            call.seq = self.next_seq
            call.position = position
            call.slot = self
            self.next_seq += 1
            self.skip[position] = 0
            self.in_flight.append(call)
            items.append((call.seq, call.payload))
        return _protocol.encode_batch(items)


@dataclass(slots=True)
class OpenedSlot:
    """What :func:`open_slot` started."""

    executor: ProcessPoolExecutor
    process: multiprocessing.process.BaseProcess | None
    pid: int
    reader: Connection
    calls: Connection
    """Write end of the call pipe."""
    progress: _SharedInt
    skip: _SharedFlags
    lock: Lock
    rss_bytes: int = 0
    """The new worker's resident memory, measured once it answered."""


def open_slot(
    ctx: multiprocessing.context.BaseContext,
    lifeline: Lifeline | None = None,
    oom_score_adj: int | None = None,
    internals: LaneInternals | None = None,
) -> OpenedSlot:
    """
    Create a slot's executor and worker and wait until it answers (blocking).

    Args:
        ctx: The lane's ``multiprocessing`` context.
        lifeline: The lane's lifeline (:mod:`._lifeline`): the worker gets its read
            end and exits when the service dies. ``None``: the worker is not tied.
        internals: Which private executor state may be read (:mod:`._mp_internals`);
            ``None``: what :func:`._mp_internals.check_internals` finds now.

    Returns:
        The executor, its worker and the channel shared with it.

    Raises:
        TimeoutError: If the worker does not answer within :data:`START_TIMEOUT`.
        BrokenProcessPool: If the worker died while starting.
    """
    boot_server(ctx)
    reader, writer = ctx.Pipe(duplex=False)
    calls_reader, calls = ctx.Pipe(duplex=False)
    progress, skip = shared_progress(-1, _protocol.MAX_BATCH)  # no ctypes on the way
    lock = ctx.Lock()
    tie: Connection | None = None
    if lifeline is not None:  # (a worker started with fork closes its copy of the write
        # end in the lane's at-fork hook, see ._fork_guard)
        tie = Connection(os.dup(lifeline.open()), writable=False)
    executor = ProcessPoolExecutor(
        max_workers=1,
        mp_context=ctx,
        initializer=_worker.init_worker,
        initargs=(
            progress,
            skip,
            lock,
            writer,
            calls_reader,
            tie,
            os.getpid(),
            tempfile.gettempdir(),
            oom_score_adj,
        ),
    )
    try:
        pid = executor.submit(_worker.ready).result(timeout=START_TIMEOUT)
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        reader.close()
        calls.close()
        raise
    finally:
        writer.close()
        calls_reader.close()
        if tie is not None:
            tie.close()
    if internals is None:
        internals = check_internals()
    result_writer = result_queue_writer(executor, internals)
    if result_writer is not None:
        result_writer.close()  # see result_queue_writer: a killed worker cannot hang shutdown
    process = worker_process(executor, pid, internals)
    rss = rss_bytes(pid)  # here, off the loop: it reads /proc
    return OpenedSlot(executor, process, pid, reader, calls, progress, skip, lock, rss)


def boot_server(ctx: multiprocessing.context.BaseContext) -> None:
    """
    Start the context's forkserver now, if it uses one and it is not running.

    The server's start (a fresh interpreter importing the workers' preload) is the
    longest step before a first worker answers; started first, it runs while the
    slot's pipes, shared memory and executor are made, instead of after them.

    Args:
        ctx: The lane's ``multiprocessing`` context.
    """
    if isinstance(ctx, LaneForkServerContext):
        ctx.ensure_running()
    elif ctx.get_start_method() == "forkserver":
        ensure_std_forkserver()  # the interpreter-wide server (see ._slot_launcher)


def shutdown_slot(
    executor: ProcessPoolExecutor, process: multiprocessing.process.BaseProcess | None
) -> None:
    """
    Stop a slot's executor and reap its worker (blocking; call from a thread).

    Args:
        executor: The slot's executor.
        process: Its worker, joined for up to 5 s.
    """
    executor.shutdown(wait=True, cancel_futures=True)
    if process is not None:
        process.join(timeout=5.0)


def write_calls(slot: Slot) -> bool:
    """
    Write as much of ``slot.outgoing`` to the call pipe as it takes now (non-blocking).

    Args:
        slot: The slot; what the pipe did not take stays in ``slot.outgoing``.

    Returns:
        True when everything was written, or nothing can be any more (the pipe is
        closed or its reader is gone: the worker's death is seen on the result
        pipe); False while bytes wait for the pipe to drain.
    """
    outgoing = slot.outgoing
    while outgoing:
        try:
            written = os.write(slot.writer_fd, outgoing)
        except BlockingIOError:
            return False
        except OSError:  # EPIPE (the worker is gone) or EBADF (the pipe is closed)
            outgoing.clear()
            return True
        del outgoing[:written]
    return True


def read_frames(slot: Slot) -> tuple[list[tuple[int, bytes]], bool]:
    """
    Read what the slot's pipe holds and split off every complete small frame (non-blocking).

    Reading stops at the header of a big frame (:func:`._protocol.big_frame`): its
    rest is read off the loop (:mod:`._big_frames`). Nothing is read while that runs
    (``slot.reading_big``): the pipe is the reading thread's.

    Args:
        slot: The slot; an incomplete or big frame stays in ``slot.buffer``.

    Returns:
        ``(sequence number, pickled outcome)`` pairs in order, and False once the
        pipe reached end of file (the worker is gone).
    """
    if slot.reader_fd < 0 or slot.reading_big:
        return [], True
    frames: list[tuple[int, bytes]] = []
    buffer = slot.buffer
    while True:
        try:
            data = os.read(slot.reader_fd, _READ_SIZE)
        except BlockingIOError:
            return frames, True
        if not data:
            return frames, False
        buffer += data
        frames += _protocol.split_frames(buffer)
        if len(data) < _READ_SIZE or _protocol.big_frame(buffer) is not None:
            return frames, True
