"""
What runs inside a worker process of the local process lane.

Covers: the slot channel a worker gets at start (:func:`init_worker`), the serving
loop the lane submits to a slot's single-worker ``ProcessPoolExecutor``
(:func:`serve`, :data:`SERVE_IDLE_SECONDS`) and the batch runner
(:func:`run_batch`). Does not cover: the wire format, both halves of it
(:mod:`._protocol`), the service side (:mod:`._lane`, :mod:`._slot`), pickling of
calls (:mod:`.._pickling`) or maps (:mod:`.._mapping`).

Calls travel on a pipe, not through the executor: :func:`serve` runs while calls
come (until an idle spell), reading one batch frame at a
time from the slot's call pipe (:func:`._protocol.split_batch`). A batch with no
calls (:data:`._protocol.STOP_FRAME`) or end of file ends it. So a call costs two
pipe hops, with none of the executor's feeder thread, call queue and manager
thread on the way; the executor still owns the process: it started it, reports
its death (the ``serve`` future breaks) and reaps it.

Progress protocol, which is what makes batching exactly-once (see
:mod:`._lane` for the parent's half). Per slot the parent shares:

- ``progress``: a shared 64-bit value; the worker stores a call's sequence number
  in it just before running the call. After a crash, the call whose number is in
  ``progress`` and has no outcome is the one that was running; higher numbers
  never started.
- ``skip``: one flag per batch position; the parent sets it to withdraw a call
  whose caller was cancelled before it started.
- ``lock``: guards the check of ``skip`` and the store to ``progress`` together,
  so a call is either withdrawn or started, never both and never neither.
- a pipe: each outcome, of any size, is one length-prefixed frame
  (:func:`._protocol.outcome_parts`). A frame of at most
  :data:`._protocol.PIPE_FRAME_LIMIT` bytes is written with a single ``write``,
  which the kernel makes atomic (``PIPE_BUF``); a bigger one is written whole in
  1 MiB writes while the service reads it off its event loop
  (:mod:`._big_frames`). A worker killed mid-frame leaves a frame that never
  completes: the service drops it, and that call is the one ``progress`` names.
"""

from __future__ import annotations

import os
import select
import time
import traceback
from typing import TYPE_CHECKING, Final, Protocol

from .._call_loading import load_call
from ._protocol import (
    PIPE_FRAME_LIMIT,
    Outcome,
    encode_outcome,
    outcome_frame,
    outcome_parts,
    split_batch,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Lock

__all__ = (
    "SERVE_IDLE_SECONDS",
    "init_worker",
    "ready",
    "run_batch",
    "serve",
)

SERVE_IDLE_SECONDS: Final = 0.1
"""
:func:`serve` returns after this long without a batch. A pending executor item
holds up the executor's shutdown, including the one ``concurrent.futures`` runs
when the interpreter exits (before ``atexit`` handlers, so a lane left open would
hang the exit); so the loop never blocks longer than this. A call that comes
after an idle spell pays one executor submission (a few hundred microseconds).
"""
_READ_SIZE: Final = 65536
_WRITE_PIECE: Final = 1024 * 1024


class _Channel:
    """The slot channel of this worker process (set once by :func:`init_worker`)."""

    __slots__ = ("buffer", "calls_fd", "fd", "lock", "progress", "skip")

    def __init__(self) -> None:
        self.fd = -1
        self.calls_fd = -1
        self.buffer = bytearray()  # call-pipe bytes read beyond the current batch
        self.lock: Lock | None = None
        self.progress: _SharedInt | None = None
        self.skip: _SharedFlags | None = None


class _SharedInt(Protocol):  # typing shape of ._shared_progress.SharedInt
    value: int


class _SharedFlags(Protocol):  # typing shape of ._shared_progress.SharedFlags
    def __getitem__(self, index: int, /) -> int: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...


# The one piece of per-process state: it exists only to hand the channel from the
# executor's initializer to serve inside a worker process. The parent never
# writes it.
_CHANNEL: Final = _Channel()


def init_worker(
    progress: object,
    skip: object,
    lock: Lock,
    pipe: Connection,
    calls: Connection,
    lifeline: Connection | None = None,
    owner: int = 0,
    spill_dir: str | None = None,
    oom_score_adj: int | None = None,
) -> None:
    """
    Executor initializer: keep the slot's channel for :func:`serve` (worker side).

    Args:
        progress: Shared counter (:class:`._shared_progress.SharedInt`): sequence
            number of the call that runs.
        skip: Shared flags (:class:`._shared_progress.SharedFlags`, ``._protocol.MAX_BATCH``
            of them): withdrawn batch positions.
        lock: Guards ``skip`` and ``progress`` together.
        pipe: Write end of the slot's result pipe.
        calls: Read end of the slot's call pipe.
        lifeline: Read end of the lane's lifeline (:mod:`._lifeline`), or ``None``.
        owner: The service's pid (for the lifeline's sweep of its spill files).
        spill_dir: Where the service writes spill files (:mod:`._spill`).
        oom_score_adj: Written to ``/proc/self/oom_score_adj`` so the kernel's OOM
            killer picks this worker first; ``None`` leaves it. A value the kernel
            refuses (lowering needs privileges) is ignored.
    """
    if oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "wb") as file:  # bytes: no codec to import
                file.write(b"%d\n" % oom_score_adj)
        except OSError:
            pass
    _CHANNEL.progress = progress  # type: ignore[assignment]
    _CHANNEL.skip = skip  # type: ignore[assignment]
    _CHANNEL.lock = lock
    _CHANNEL.fd = os.dup(pipe.fileno())
    pipe.close()
    _CHANNEL.calls_fd = os.dup(calls.fileno())
    calls.close()
    if lifeline is not None:
        from ._lifeline import watch_lifeline

        watch_lifeline(os.dup(lifeline.fileno()), owner, spill_dir)
        lifeline.close()


def ready() -> int:
    """Return this worker's pid: the first submission, proving the worker runs."""
    return os.getpid()


def serve() -> None:
    """
    Run the batches the lane writes to the slot's call pipe (worker side).

    Submitted to the slot's executor when the lane has calls for the worker; it
    runs until the lane ends it or it is idle for :data:`SERVE_IDLE_SECONDS`.
    Returns after :data:`._protocol.STOP_FRAME`, end of file or an idle spell (a
    batch written meanwhile stays whole in the pipe for the next :func:`serve`).
    """
    fd = _CHANNEL.calls_fd
    buffer = _CHANNEL.buffer
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    idle_ms = round(SERVE_IDLE_SECONDS * 1000)
    while True:
        calls = split_batch(buffer)
        while calls is None:
            if not buffer and not poller.poll(idle_ms):
                return  # idle: let the executor see a finished item (see SERVE_IDLE_SECONDS)
            data = os.read(fd, _READ_SIZE)
            if not data:
                return
            buffer += data
            calls = split_batch(buffer)
        if not calls:  # STOP_FRAME
            return
        run_batch(calls)


def run_batch(calls: list[tuple[int, bytes]]) -> None:
    """
    Run pickled calls in order, writing each outcome frame to the slot's pipe (worker side).

    Args:
        calls: ``(sequence number, pickled (func, args))`` pairs, at most
            :data:`._protocol.MAX_BATCH`.
    """
    channel = _CHANNEL
    progress, skip, lock = channel.progress, channel.skip, channel.lock
    assert progress is not None
    assert skip is not None
    assert lock is not None
    fd = channel.fd
    for position, (seq, payload) in enumerate(calls):
        with lock:
            withdrawn = bool(skip[position])
            if not withdrawn:
                progress.value = seq
        if withdrawn:
            parts = [outcome_frame(seq, encode_outcome(Outcome.SKIPPED, 0.0, None))]
        else:
            parts = outcome_parts(seq, *_run_one(payload))
        if len(parts) == 1 and len(parts[0]) <= PIPE_FRAME_LIMIT:
            os.write(fd, parts[0])  # one atomic write
        else:
            _write_all(fd, parts)


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write a big frame's parts whole (blocking: the service reads as it comes)."""
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view[:_WRITE_PIECE]) :]


def _run_one(payload: bytes) -> tuple[Outcome, float, object]:
    """Run one call; every failure is reported as ``(ERROR, seconds, (exception, traceback))``."""
    start = time.perf_counter()
    try:
        func, args = load_call(payload)
        value = func(*args)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, as ProcessPoolExecutor does
        seconds = time.perf_counter() - start
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return Outcome.ERROR, seconds, (exc, f'\n"""\n{tb}"""')
    return Outcome.OK, time.perf_counter() - start, value
