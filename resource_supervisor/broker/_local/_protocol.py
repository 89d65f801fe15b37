"""
The wire format between the local process lane and its workers: both halves.

Covers: the frame headers (:data:`FRAME_HEADER`, :data:`BATCH_HEADER`,
:data:`STOP_FRAME`) and their limits (:data:`PIPE_FRAME_LIMIT`, :data:`MAX_BATCH`),
:class:`Outcome` (how a call ended), batch frames on the call pipe
(:func:`encode_batch` in the service, :func:`split_batch` in the worker), outcome
frames on the result pipe (:func:`encode_outcome` in the worker,
:func:`split_frames`, :func:`decode_frame` and :func:`decode_outcome` in the
service) and :class:`RemoteTraceback`. Does not cover: the pipes' I/O (the
worker's :mod:`._worker`, the service's :mod:`._slot`), the progress memory that
makes batching exactly-once (:mod:`._shared_progress`, described in
:mod:`._worker`) or outcomes too big for the pipe (:mod:`._big_outcome`).

The formats:

- call pipe, one batch frame: ``!II`` (number of calls, body length), then per
  call ``!Iq`` (length, sequence number) + the pickled ``(func, args)``. A batch
  with no calls (:data:`STOP_FRAME`) ends the worker's serving loop.
- result pipe, one outcome frame per call: ``!Iq`` (length, sequence number) +
  the pickled ``(status, seconds, value)``, *status* an :class:`Outcome`. A frame
  of at most :data:`PIPE_FRAME_LIMIT` bytes is one ``write``, which the kernel
  makes atomic, so a worker killed mid-write never leaves half a frame.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import enum
import pickle
import struct
from typing import Final

__all__ = (
    "BATCH_HEADER",
    "FRAME_HEADER",
    "MAX_BATCH",
    "PIPE_FRAME_LIMIT",
    "STOP_FRAME",
    "Outcome",
    "RemoteTraceback",
    "decode_frame",
    "decode_outcome",
    "encode_batch",
    "encode_outcome",
    "outcome_frame",
    "remote_outcome",
    "split_batch",
    "split_frames",
)

FRAME_HEADER: Final = struct.Struct("!Iq")
"""Prefix of one call or outcome frame: payload length, then the call's sequence number."""
BATCH_HEADER: Final = struct.Struct("!II")
"""Prefix of a batch frame on the call pipe: number of calls, then body length."""
STOP_FRAME: Final = BATCH_HEADER.pack(0, 0)
"""The empty batch: the worker's serving loop returns when it reads it."""
PIPE_FRAME_LIMIT: Final = 4096
"""Largest frame written to the pipe: Linux's PIPE_BUF, the atomic write size."""
MAX_BATCH: Final = 32
"""Most calls in one submission to a slot (size of the ``skip`` array)."""


class Outcome(enum.IntEnum):
    """How a call ended; the value is what travels in the outcome frame."""

    ERROR = 0
    """It raised: the value is ``(exception, traceback text)`` on the wire."""
    OK = 1
    """It returned: the value is the result."""
    SKIPPED = 2
    """Withdrawn before it started: it never ran."""


# plain ints for the hot paths: pickling an int is cheaper than an enum member
_ERROR: Final = Outcome.ERROR.value
_OK: Final = Outcome.OK.value


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


def encode_batch(calls: list[tuple[int, bytes]]) -> bytes:
    """
    Encode a batch frame for the call pipe (service side).

    Args:
        calls: ``(sequence number, pickled (func, args))`` pairs, 1 to
            :data:`MAX_BATCH` of them.

    Returns:
        The frame :func:`split_batch` takes apart.
    """
    parts = [b""]
    pack = FRAME_HEADER.pack
    for seq, payload in calls:
        parts.append(pack(len(payload), seq))
        parts.append(payload)
    body = sum(len(part) for part in parts)
    parts[0] = BATCH_HEADER.pack(len(calls), body)
    return b"".join(parts)


def split_batch(buffer: bytearray) -> list[tuple[int, bytes]] | None:
    """
    Take the first complete batch frame off *buffer* (worker side).

    Args:
        buffer: Bytes read from the call pipe; the batch's bytes are removed.

    Returns:
        ``None`` while the first frame is incomplete (*buffer* unchanged), else its
        ``(sequence number, pickled call)`` pairs: an empty list for
        :data:`STOP_FRAME`.
    """
    if len(buffer) < BATCH_HEADER.size:
        return None
    count, body = BATCH_HEADER.unpack_from(buffer)
    if len(buffer) < BATCH_HEADER.size + body:
        return None
    calls: list[tuple[int, bytes]] = []
    offset = BATCH_HEADER.size
    for _ in range(count):
        length, seq = FRAME_HEADER.unpack_from(buffer, offset)
        offset += FRAME_HEADER.size
        calls.append((seq, bytes(buffer[offset : offset + length])))
        offset += length
    del buffer[: BATCH_HEADER.size + body]
    return calls


def encode_outcome(status: Outcome, seconds: float, value: object) -> bytes:
    """
    Encode one outcome; a result or error that cannot be pickled becomes an error.

    Args:
        status: How the call ended; for :attr:`Outcome.ERROR` *value* is
            ``(exception, traceback text)``.
        seconds: Time the call ran in the worker.
        value: The result or the ``(exception, traceback)`` pair.

    Returns:
        The pickled outcome, the payload of an outcome frame.
    """
    try:
        return pickle.dumps((int(status), seconds, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any pickling failure becomes the call's error
        what = "result" if status == _OK else "exception"
        error = pickle.PicklingError(f"the call's {what} cannot be pickled: {exc!r}")
        return pickle.dumps((_ERROR, seconds, (error, "")), protocol=pickle.HIGHEST_PROTOCOL)


def outcome_frame(seq: int, data: bytes) -> bytes:
    """Return the result-pipe frame carrying *data*, the outcome of call *seq* (worker side)."""
    return FRAME_HEADER.pack(len(data), seq) + data


def split_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """
    Take every complete outcome frame off *buffer* (service side).

    Args:
        buffer: Bytes read from the result pipe; an incomplete frame stays.

    Returns:
        ``(sequence number, encoded outcome)`` pairs in order.
    """
    frames: list[tuple[int, bytes]] = []
    size = FRAME_HEADER.size
    offset = 0
    while len(buffer) - offset >= size:
        length, seq = FRAME_HEADER.unpack_from(buffer, offset)
        end = offset + size + length
        if end > len(buffer):
            break
        frames.append((seq, bytes(buffer[offset + size : end])))
        offset = end
    del buffer[:offset]
    return frames


def decode_frame(seq: int, data: bytes) -> tuple[int, Outcome, float, object]:
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
        return seq, Outcome.ERROR, 0.0, exc


def decode_outcome(data: bytes) -> tuple[Outcome, float, object]:
    """
    Decode :func:`encode_outcome` bytes (service side).

    Args:
        data: One frame's payload.

    Returns:
        ``(status, seconds, value)``; for a failed call *value* is the
        exception with a :class:`RemoteTraceback` as its ``__cause__``.
    """
    status, seconds, value = pickle.loads(data)
    return remote_outcome(status, seconds, value)


def remote_outcome(status: int, seconds: float, value: object) -> tuple[Outcome, float, object]:
    """
    Turn a decoded ``(status, seconds, value)`` into what the caller gets (service side).

    Args:
        status: The :class:`Outcome` value from the wire.
        seconds: Time the call ran.
        value: The result, or ``(exception, traceback text)`` for an error.

    Returns:
        ``(status, seconds, value)``; an error's *value* is the exception with a
        :class:`RemoteTraceback` as its ``__cause__`` (when the worker sent one).
    """
    outcome = Outcome(status)
    if outcome is Outcome.ERROR:
        exc: BaseException
        tb: str
        exc, tb = value  # type: ignore[misc]
        if tb:
            exc.__cause__ = RemoteTraceback(tb)
        value = exc
    return outcome, seconds, value
