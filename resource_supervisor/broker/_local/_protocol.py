"""
The wire format between the local process lane and its workers: both halves.

Covers: the frame headers (:data:`FRAME_HEADER`, :data:`BATCH_HEADER`,
:data:`STOP_FRAME`, :data:`OUTCOME_HEADER`, :data:`BIG_HEAD`) and their limits
(:data:`PIPE_FRAME_LIMIT`, :data:`BIG_FRAME_BYTES`, :data:`MAX_BATCH`),
:class:`Outcome` (how a call ended), :class:`FrameKind` (how an outcome frame's
payload is laid out), batch frames on the call pipe (:func:`encode_batch` in the
service, :func:`split_batch` in the worker), outcome frames on the result pipe
(:func:`outcome_parts` in the worker; :func:`split_frames`, :func:`big_frame`,
:func:`decode_frame` and :func:`text_shape` in the service)
and :class:`RemoteTraceback`. Does not cover: the pipes' I/O (the worker's
:mod:`._worker`, the service's :mod:`._slot` and, for big frames,
:mod:`._big_frames`), the progress memory that makes batching exactly-once
(:mod:`._shared_progress`, described in :mod:`._worker`) or pickling in pieces
(:mod:`._pieces`).

The formats:

- call pipe, one batch frame: ``!II`` (number of calls, body length), then per
  call ``!Iq`` (length, sequence number) + the pickled ``(func, args)``. A batch
  with no calls (:data:`STOP_FRAME`) ends the worker's serving loop.
- result pipe, one outcome frame per call, whatever its size: ``!QqB`` (payload
  length, sequence number, :class:`FrameKind`) + the payload. For
  :attr:`FrameKind.PICKLED` the payload is the pickled ``(status, seconds, value)``,
  *status* an :class:`Outcome`. The other kinds carry a returned value: the
  payload starts with ``!dB`` (seconds, detail) and the body follows: a
  ``bytes`` as is (:attr:`FrameKind.BYTES`), a ``str`` in its own storage width
  (:attr:`FrameKind.TEXT`, detail a key of :data:`TEXT_WIDTHS`), a list or tuple
  as ``!Q`` (length) + pickle per piece (:attr:`FrameKind.PIECES`, detail 1 for a
  tuple). A frame of at most :data:`PIPE_FRAME_LIMIT` bytes is one ``write``,
  which the kernel makes atomic; a bigger one is several, and a worker killed
  mid-write leaves a frame that never completes: the service drops it at end of
  file and the call fails as the running one.
- small and big: the service decodes a pickled frame of at most
  :data:`BIG_FRAME_BYTES` on the event loop; any other frame is big, read and
  decoded off the loop (:mod:`._big_frames`).

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import enum
import pickle
import struct
import sys
from typing import Final

from ._pieces import PIECE_HEADER, pickle_pieces, piece_worthy

__all__ = (
    "BATCH_HEADER",
    "BIG_FRAME_BYTES",
    "BIG_HEAD",
    "FRAME_HEADER",
    "MAX_BATCH",
    "OUTCOME_HEADER",
    "PIECE_HEADER",
    "PIPE_FRAME_LIMIT",
    "STOP_FRAME",
    "TEXT_WIDTHS",
    "FrameKind",
    "Outcome",
    "RemoteTraceback",
    "big_frame",
    "decode_frame",
    "decode_outcome",
    "encode_batch",
    "encode_outcome",
    "outcome_frame",
    "outcome_parts",
    "remote_outcome",
    "split_batch",
    "split_frames",
    "text_shape",
)

FRAME_HEADER: Final = struct.Struct("!Iq")
"""Prefix of one call in a batch frame: payload length, then the call's sequence number."""
BATCH_HEADER: Final = struct.Struct("!II")
"""Prefix of a batch frame on the call pipe: number of calls, then body length."""
STOP_FRAME: Final = BATCH_HEADER.pack(0, 0)
"""The empty batch: the worker's serving loop returns when it reads it."""
OUTCOME_HEADER: Final = struct.Struct("!QqB")
"""Prefix of an outcome frame: payload length, the call's sequence number, :class:`FrameKind`."""
BIG_HEAD: Final = struct.Struct("!dB")
"""Start of a payload that is not pickled: the call's seconds, then a detail byte."""
PIPE_FRAME_LIMIT: Final = 4096
"""Largest frame written with one ``write``: Linux's PIPE_BUF, the atomic write size."""
BIG_FRAME_BYTES: Final = 65536
"""
A pickled payload up to this size is decoded on the event loop (a fraction of a
millisecond, within one pipe read); bigger ones, and every raw kind, off it.
"""
MAX_BATCH: Final = 32
"""Most calls in one submission to a slot (size of the ``skip`` array)."""
_ORDER: Final = "le" if sys.byteorder == "little" else "be"  # a str's own storage order
TEXT_WIDTHS: Final[dict[int, tuple[str, int]]] = {
    0: ("latin-1", 0x7F),  # ASCII, one byte per character
    1: ("latin-1", 0xFF),
    2: (f"utf-16-{_ORDER}", 0xFFFF),
    4: (f"utf-32-{_ORDER}", 0x10FFFF),
}
"""
A :attr:`FrameKind.TEXT` detail byte: the codec of its body and its largest
character. The body is the str's characters as CPython stores them (one, two or
four bytes each, native order), so the service can fill a new str in place.
"""


class Outcome(enum.IntEnum):
    """How a call ended; the value is what travels in the outcome frame."""

    ERROR = 0
    """It raised: the value is ``(exception, traceback text)`` on the wire."""
    OK = 1
    """It returned: the value is the result."""
    SKIPPED = 2
    """Withdrawn before it started: it never ran."""


class FrameKind(enum.IntEnum):
    """How an outcome frame's payload is laid out (see the module's formats)."""

    PICKLED = 0
    """The pickled ``(status, seconds, value)``."""
    BYTES = 1
    """A returned ``bytes``, as is."""
    TEXT = 2
    """A returned ``str``, in its storage width."""
    PIECES = 3
    """A returned list or tuple, pickled in pieces."""


# plain ints for the hot paths: pickling an int is cheaper than an enum member
_ERROR: Final = Outcome.ERROR.value
_OK: Final = Outcome.OK.value
_KINDS: Final = frozenset(kind.value for kind in FrameKind)


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
    """Return the result-pipe frame carrying *data*, the pickled outcome of *seq* (worker side)."""
    return OUTCOME_HEADER.pack(len(data), seq, FrameKind.PICKLED) + data


def outcome_parts(seq: int, status: Outcome, seconds: float, value: object) -> list[bytes]:
    """
    Encode one outcome as the frame's parts, written to the result pipe in order (worker side).

    A returned ``bytes`` or ``str`` longer than :data:`BIG_FRAME_BYTES` travels raw
    (:attr:`FrameKind.BYTES`, :attr:`FrameKind.TEXT`), a long list or tuple in pieces
    (:attr:`FrameKind.PIECES`, see :mod:`._pieces`); anything else is pickled whole.

    Args:
        seq: The call's sequence number.
        status: How the call ended.
        seconds: Time the call ran in the worker.
        value: The result, or ``(exception, traceback text)`` for an error.

    Returns:
        One part for a pickled outcome, else the header and the body's parts.
    """
    if status is Outcome.OK:
        kind = type(value)
        if kind is bytes and len(value) > BIG_FRAME_BYTES:  # type: ignore[arg-type]
            return _big_parts(seq, FrameKind.BYTES, seconds, 0, [value])  # type: ignore[list-item]
        if kind is str and len(value) > BIG_FRAME_BYTES:  # type: ignore[arg-type]
            width, data = _encode_text(value)  # type: ignore[arg-type]
            return _big_parts(seq, FrameKind.TEXT, seconds, width, [data])
        if piece_worthy(value):
            try:
                pieces = pickle_pieces(value)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - encode_outcome below reports it
                pieces = []
            if len(pieces) > 1:
                body: list[bytes] = []
                for piece in pieces:
                    body += (PIECE_HEADER.pack(len(piece)), piece)
                return _big_parts(seq, FrameKind.PIECES, seconds, kind is tuple, body)
    return [outcome_frame(seq, encode_outcome(status, seconds, value))]


def _big_parts(
    seq: int, kind: FrameKind, seconds: float, detail: int, body: list[bytes]
) -> list[bytes]:
    length = BIG_HEAD.size + sum(len(part) for part in body)
    return [OUTCOME_HEADER.pack(length, seq, kind) + BIG_HEAD.pack(seconds, detail), *body]


def _encode_text(text: str) -> tuple[int, bytes]:
    """Return a str's storage width (:data:`TEXT_WIDTHS`) and its characters in that width."""
    if text.isascii():
        return 0, text.encode("latin-1")
    try:
        return 1, text.encode("latin-1")
    except UnicodeEncodeError:
        pass
    data = text.encode(TEXT_WIDTHS[2][0], "surrogatepass")
    if len(data) == 2 * len(text):  # no character beyond U+FFFF
        return 2, data
    return 4, text.encode(TEXT_WIDTHS[4][0], "surrogatepass")


def text_shape(width: int, size: int) -> tuple[int, int, str]:
    """
    Describe a :attr:`FrameKind.TEXT` body (service side).

    Args:
        width: The frame's detail byte (a key of :data:`TEXT_WIDTHS`).
        size: The body's length in bytes.

    Returns:
        ``(characters, largest character, codec)``: what ``PyUnicode_New`` takes to
        make a str with the same storage, and the codec that decodes the body.

    Raises:
        ValueError: For an unknown width or a body that is not a whole number of characters.
    """
    codec, maxchar = TEXT_WIDTHS[width]
    unit = max(width, 1)
    if size % unit:
        raise ValueError(f"a text body of {size} bytes is not made of {unit}-byte characters")
    return size // unit, maxchar, codec


def split_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """
    Take every complete small outcome frame off *buffer* (service side).

    Args:
        buffer: Bytes read from the result pipe; an incomplete frame, and a big one
            (see :func:`big_frame`) with everything after it, stay.

    Returns:
        ``(sequence number, pickled outcome)`` pairs in order.
    """
    frames: list[tuple[int, bytes]] = []
    size = OUTCOME_HEADER.size
    offset = 0
    while len(buffer) - offset >= size:
        length, seq, kind = OUTCOME_HEADER.unpack_from(buffer, offset)
        end = offset + size + length
        if kind != FrameKind.PICKLED or length > BIG_FRAME_BYTES or end > len(buffer):
            break
        frames.append((seq, bytes(buffer[offset + size : end])))
        offset = end
    del buffer[:offset]
    return frames


def big_frame(buffer: bytearray) -> tuple[int, int, FrameKind] | None:
    """
    Return ``(payload length, sequence number, kind)`` when *buffer* starts with the
    header of a big frame, one read and decoded off the loop (service side).

    A frame is big when its payload is over :data:`BIG_FRAME_BYTES` or it is not
    :attr:`FrameKind.PICKLED`.
    """
    if len(buffer) < OUTCOME_HEADER.size:
        return None
    length, seq, kind = OUTCOME_HEADER.unpack_from(buffer)
    if kind == FrameKind.PICKLED and length <= BIG_FRAME_BYTES:
        return None
    # an unknown kind (a corrupt stream) reads as a big pickle, which fails to decode
    return length, seq, FrameKind(kind) if kind in _KINDS else FrameKind.PICKLED


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
