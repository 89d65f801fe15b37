"""
What runs inside a worker process of the local process lane, and the wire formats.

Covers: the slot channel a worker gets at start (:func:`init_worker`), the serving
loop the lane submits to a slot's single-worker ``ProcessPoolExecutor``
(:func:`serve`, :data:`SERVE_IDLE_SECONDS`), the batch frames it reads from the
slot's call pipe (:func:`encode_batch`, :data:`STOP_FRAME`), the batch runner
(:func:`run_batch`), the outcome frames it writes to the slot's result pipe
(:func:`encode_outcome`, :func:`decode_outcome`, :func:`decode_frame`) and
:class:`RemoteTraceback`. Does not cover: the parent side (:mod:`._lane`,
:mod:`._slot`), pickling of calls (:mod:`.._pickling`) or maps (:mod:`.._mapping`).

Calls travel on a pipe, not through the executor: :func:`serve` runs while calls
come (until an idle spell or a big outcome, see below), reading one batch frame at a
time from the slot's call pipe: ``!II`` (number of calls, body length), then per
call ``!Iq`` (length, sequence number) + the pickled call. A batch with no calls
(:data:`STOP_FRAME`) or end of file ends it. So a call costs two pipe hops, with
none of the executor's feeder thread, call queue and manager thread on the way;
the executor still owns the process: it started it, reports its death (the
``serve`` future breaks) and reaps it.

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
- a pipe: each outcome is one frame ``!Iq`` (length, sequence number) + pickle. A frame of at most
  :data:`PIPE_FRAME_LIMIT` bytes is written with a single ``write`` to a pipe, which
  the kernel makes atomic (``PIPE_BUF``), so a worker killed mid-write never leaves
  half a frame. A bigger outcome ends the batch and :func:`serve`: it is written to
  a spill file (:mod:`._big_outcome`) and only where it lies is returned through
  the executor's own result channel (the calls after it never
  started; the lane submits :func:`serve` again before its next batch).
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
import traceback
from typing import TYPE_CHECKING, Final, Protocol

from .._call_loading import load_call
from ._big_outcome import BigOutcome, spill_outcome

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Lock

__all__ = (
    "BATCH_HEADER",
    "FRAME_HEADER",
    "MAX_BATCH",
    "PIPE_FRAME_LIMIT",
    "SERVE_IDLE_SECONDS",
    "SKIPPED",
    "STOP_FRAME",
    "RemoteTraceback",
    "decode_frame",
    "decode_outcome",
    "encode_batch",
    "encode_outcome",
    "init_worker",
    "ready",
    "run_batch",
    "serve",
)

FRAME_HEADER: Final = struct.Struct("!Iq")
"""Prefix of one call or outcome frame: payload length, then the call's sequence number."""
BATCH_HEADER: Final = struct.Struct("!II")
"""Prefix of a batch frame on the call pipe: number of calls, then body length."""
STOP_FRAME: Final = BATCH_HEADER.pack(0, 0)
"""The empty batch: :func:`serve` returns when it reads it."""
SERVE_IDLE_SECONDS: Final = 0.1
"""
:func:`serve` returns after this long without a batch. A pending executor item
holds up the executor's shutdown, including the one ``concurrent.futures`` runs
when the interpreter exits (before ``atexit`` handlers, so a lane left open would
hang the exit); so the loop never blocks longer than this. A call that comes
after an idle spell pays one executor submission (a few hundred microseconds).
"""
_READ_SIZE: Final = 65536
PIPE_FRAME_LIMIT: Final = 4096
"""Largest frame written to the pipe: Linux's PIPE_BUF, the atomic write size."""
MAX_BATCH: Final = 32
"""Most calls in one submission to a slot (size of the ``skip`` array)."""
SKIPPED: Final = 2
"""Outcome status of a call withdrawn before it started."""
_OK: Final = 1
_ERROR: Final = 0


class RemoteTraceback(Exception):  # noqa: N818 - the name ProcessPoolExecutor uses
    """
    Raised by nothing: set as the ``__cause__`` of an exception that crossed from a
    worker, carrying the worker's formatted traceback (as ``ProcessPoolExecutor`` does).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _Channel:
    """The slot channel of this worker process (set once by :func:`init_worker`)."""

    __slots__ = ("buffer", "calls_fd", "fd", "lock", "owner", "progress", "skip", "spill_dir")

    def __init__(self) -> None:
        self.fd = -1
        self.calls_fd = -1
        self.buffer = bytearray()  # call-pipe bytes read beyond the current batch
        self.lock: Lock | None = None
        self.progress: _SharedInt | None = None
        self.skip: _SharedFlags | None = None
        self.owner = 0  # the service's pid, for spill file names
        self.spill_dir: str | None = None


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
        skip: Shared flags (:class:`._shared_progress.SharedFlags`, ``MAX_BATCH``
            of them): withdrawn batch positions.
        lock: Guards ``skip`` and ``progress`` together.
        pipe: Write end of the slot's result pipe.
        calls: Read end of the slot's call pipe.
        lifeline: Read end of the lane's lifeline (:mod:`._lifeline`), or ``None``.
        owner: The service's pid.
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
    _CHANNEL.owner = owner or os.getppid()
    _CHANNEL.spill_dir = spill_dir
    if lifeline is not None:
        from ._lifeline import watch_lifeline

        watch_lifeline(os.dup(lifeline.fileno()), owner, spill_dir)
        lifeline.close()


def ready() -> int:
    """Return this worker's pid: the first submission, proving the worker runs."""
    return os.getpid()


def encode_batch(calls: list[tuple[int, bytes]]) -> bytes:
    """
    Encode a batch frame for the call pipe (parent side).

    Args:
        calls: ``(sequence number, pickled (func, args))`` pairs, 1 to
            :data:`MAX_BATCH` of them.

    Returns:
        The frame :func:`serve` reads.
    """
    parts = [b""]
    pack = FRAME_HEADER.pack
    for seq, payload in calls:
        parts.append(pack(len(payload), seq))
        parts.append(payload)
    body = sum(len(part) for part in parts)
    parts[0] = BATCH_HEADER.pack(len(calls), body)
    return b"".join(parts)


def serve() -> tuple[int, BigOutcome] | None:
    """
    Run the batches the lane writes to the slot's call pipe (worker side).

    Submitted to the slot's executor when the lane has calls for the worker; it
    runs until the lane ends it or it is idle for :data:`SERVE_IDLE_SECONDS`.

    Returns:
        ``None`` after :data:`STOP_FRAME`, end of file or an idle spell (a batch
        written meanwhile stays whole in the pipe for the next :func:`serve`);
        else what :func:`run_batch` returned for an outcome too big for the
        result pipe.
    """
    fd = _CHANNEL.calls_fd
    buffer = _CHANNEL.buffer
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    idle_ms = round(SERVE_IDLE_SECONDS * 1000)
    while True:
        while len(buffer) < BATCH_HEADER.size or len(buffer) < (
            BATCH_HEADER.size + BATCH_HEADER.unpack_from(buffer)[1]
        ):
            if not buffer and not poller.poll(idle_ms):
                return None  # idle: let the executor see a finished item (see SERVE_IDLE_SECONDS)
            data = os.read(fd, _READ_SIZE)
            if not data:
                return None
            buffer += data
        count, body = BATCH_HEADER.unpack_from(buffer)
        if count == 0:
            del buffer[: BATCH_HEADER.size]
            return None
        calls: list[tuple[int, bytes]] = []
        offset = BATCH_HEADER.size
        for _ in range(count):
            length, seq = FRAME_HEADER.unpack_from(buffer, offset)
            offset += FRAME_HEADER.size
            calls.append((seq, bytes(buffer[offset : offset + length])))
            offset += length
        del buffer[: BATCH_HEADER.size + body]
        big = run_batch(calls)
        if big is not None:
            return big


def run_batch(calls: list[tuple[int, bytes]]) -> tuple[int, BigOutcome] | None:
    """
    Run pickled calls in order, writing each outcome to the slot's pipe (worker side).

    Args:
        calls: ``(sequence number, pickled (func, args))`` pairs, at most
            :data:`MAX_BATCH`.

    Returns:
        ``None`` when every outcome went through the pipe; otherwise the sequence
        number of the first one too big for an atomic pipe write, and where it was
        spilled (:mod:`._big_outcome`). The batch stops there: later calls did not
        start.
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
            frame, raw, seconds = encode_outcome(SKIPPED, 0.0, None), None, 0.0
        else:
            frame, raw, seconds = _run_one(payload)
        if raw is not None or len(frame) + FRAME_HEADER.size > PIPE_FRAME_LIMIT:
            big = spill_outcome(
                frame if raw is None else raw,
                raw=raw is not None,
                seconds=seconds,
                owner=channel.owner,
                directory=channel.spill_dir,
            )
            return seq, big
        os.write(fd, FRAME_HEADER.pack(len(frame), seq) + frame)
    return None


def _run_one(payload: bytes) -> tuple[bytes, bytes | None, float]:
    """
    Run one call; every failure is reported, none escapes.

    Returns ``(encoded outcome, None, seconds)``, or ``(b"", result, seconds)`` for a
    ``bytes`` result too big for the pipe, which travels raw (:mod:`._big_outcome`).
    """
    start = time.perf_counter()
    try:
        func, args = load_call(payload)
        value = func(*args)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, as ProcessPoolExecutor does
        seconds = time.perf_counter() - start
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return encode_outcome(_ERROR, seconds, (exc, f'\n"""\n{tb}"""')), None, seconds
    seconds = time.perf_counter() - start
    if type(value) is bytes and len(value) > PIPE_FRAME_LIMIT:
        return b"", value, seconds
    return encode_outcome(_OK, seconds, value), None, seconds


def encode_outcome(status: int, seconds: float, value: object) -> bytes:
    """
    Encode one outcome; a result or error that cannot be pickled becomes an error.

    Args:
        status: 1 = returned *value*; 0 = raised, *value* is ``(exception, traceback
            text)``; :data:`SKIPPED` = withdrawn before it started.
        seconds: Time the call ran in the worker.
        value: The result or the ``(exception, traceback)`` pair.

    Returns:
        The pickled outcome.
    """
    try:
        return pickle.dumps((status, seconds, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any pickling failure becomes the call's error
        what = "result" if status == _OK else "exception"
        error = pickle.PicklingError(f"the call's {what} cannot be pickled: {exc!r}")
        return pickle.dumps((_ERROR, seconds, (error, "")), protocol=pickle.HIGHEST_PROTOCOL)


def decode_frame(seq: int, data: bytes) -> tuple[int, int, float, object]:
    """
    Decode one outcome frame; one that cannot be decoded becomes the call's error.

    Args:
        seq: The frame's sequence number.
        data: Its payload.

    Returns:
        ``(seq, status, seconds, value)``, as :func:`decode_outcome` plus *seq*.
    """
    try:
        return (seq, *decode_outcome(data))
    except Exception as exc:  # noqa: BLE001 - e.g. the result's class is not importable here
        return seq, _ERROR, 0.0, exc


def decode_outcome(data: bytes) -> tuple[int, float, object]:
    """
    Decode :func:`encode_outcome` bytes (parent side).

    Args:
        data: One frame's payload.

    Returns:
        ``(status, seconds, value)``; for a failed call *value* is the
        exception with a :class:`RemoteTraceback` as its ``__cause__``.
    """
    status, seconds, value = pickle.loads(data)
    if status == _ERROR:
        exc, tb = value
        if tb:
            exc.__cause__ = RemoteTraceback(tb)
        value = exc
    return status, seconds, value
