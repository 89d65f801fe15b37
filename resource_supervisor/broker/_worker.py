"""
What runs inside a worker process of the local process lane, and the wire format back.

Covers: the slot channel a worker gets at start (:func:`init_worker`), the batch
runner the lane submits to a slot's single-worker ``ProcessPoolExecutor``
(:func:`run_batch`), the outcome frames it writes to the slot's result pipe
(:func:`encode_outcome`, :func:`decode_outcome`) and :class:`RemoteTraceback`.
Does not cover: the parent side (:mod:`._processes`), pickling of calls
(:mod:`._pickling`) or maps (:mod:`._mapping`).

Progress protocol, which is what makes batching exactly-once (see
:mod:`._processes` for the parent's half). Per slot the parent shares:

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
  half a frame. A bigger outcome ends the batch and is returned through the
  executor's own result channel instead (the calls after it never started).
"""

from __future__ import annotations

import os
import pickle
import struct
import time
import traceback
from typing import TYPE_CHECKING, Final, Protocol

from ._pickling import load_call

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Lock

__all__ = (
    "FRAME_HEADER",
    "MAX_BATCH",
    "PIPE_FRAME_LIMIT",
    "SKIPPED",
    "RemoteTraceback",
    "decode_outcome",
    "encode_outcome",
    "init_worker",
    "ready",
    "run_batch",
)

FRAME_HEADER: Final = struct.Struct("!Iq")
"""Prefix of a frame on the result pipe: payload length, then the call's sequence number."""
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

    __slots__ = ("fd", "lock", "progress", "skip")

    def __init__(self) -> None:
        self.fd = -1
        self.lock: Lock | None = None
        self.progress: _SharedInt | None = None
        self.skip: _SharedFlags | None = None


class _SharedInt(Protocol):  # typing shape of a ``multiprocessing`` RawValue("q")
    value: int


class _SharedFlags(Protocol):  # typing shape of a ``multiprocessing`` RawArray("b")
    def __getitem__(self, index: int, /) -> int: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...


# The one piece of per-process state: it exists only to hand the channel from the
# executor's initializer to run_batch inside a worker process. The parent never
# writes it.
_CHANNEL: Final = _Channel()


def init_worker(progress: object, skip: object, lock: Lock, pipe: Connection) -> None:
    """
    Executor initializer: keep the slot's channel for :func:`run_batch` (worker side).

    Args:
        progress: Shared ``RawValue("q")``: sequence number of the call that runs.
        skip: Shared ``RawArray("b", MAX_BATCH)``: withdrawn batch positions.
        lock: Guards ``skip`` and ``progress`` together.
        pipe: Write end of the slot's result pipe.
    """
    _CHANNEL.progress = progress  # type: ignore[assignment]
    _CHANNEL.skip = skip  # type: ignore[assignment]
    _CHANNEL.lock = lock
    _CHANNEL.fd = os.dup(pipe.fileno())
    pipe.close()


def ready() -> int:
    """Return this worker's pid: the first submission, proving the worker runs."""
    return os.getpid()


def run_batch(calls: list[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    """
    Run pickled calls in order, writing each outcome to the slot's pipe (worker side).

    Args:
        calls: ``(sequence number, pickled (func, args))`` pairs, at most
            :data:`MAX_BATCH`.

    Returns:
        ``None`` when every outcome went through the pipe; otherwise the sequence
        number and encoded outcome of the first one too big for an atomic pipe
        write. The batch stops there: later calls did not start.
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
        frame = encode_outcome(SKIPPED, 0.0, None) if withdrawn else _run_one(payload)
        if len(frame) + FRAME_HEADER.size > PIPE_FRAME_LIMIT:
            return seq, frame
        os.write(fd, FRAME_HEADER.pack(len(frame), seq) + frame)
    return None


def _run_one(payload: bytes) -> bytes:
    """Run one call and encode its outcome; every failure is reported, none escapes."""
    start = time.perf_counter()
    try:
        func, args = load_call(payload)
        value = func(*args)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, as ProcessPoolExecutor does
        seconds = time.perf_counter() - start
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return encode_outcome(_ERROR, seconds, (exc, f'\n"""\n{tb}"""'))
    return encode_outcome(_OK, time.perf_counter() - start, value)


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
