"""
Reading one big outcome frame off the event loop (service side, in a thread).

Covers: :func:`read_big_frame`: given the header of a big frame (see
:func:`._protocol.big_frame`) and the bytes the loop already read past it, read
the rest of the frame from the slot's result pipe and decode it, in the calling
thread. Does not cover: the wire format (:mod:`._protocol`), the objects filled in
place (:mod:`._fresh_objects`) or when the lane hands a frame to a thread
(:mod:`._delivery`).

The GIL is held only for short steps: the body is read with ``os.readv`` straight
into its final object where it can be (a ``bytes`` or ``str`` result, or the whole
payload of a pickled or pieced one), which releases the GIL for each read, page
faults included; a pickled payload is then unpickled in one call (its time is
its shape's: one giant opaque object cannot be split), a pieced one read and
unpickled piece by piece, so the event loop gets the GIL between pieces and no
buffer as big as the whole is freed at once (freeing 500 MiB is a ``munmap``
that holds the GIL for tens of milliseconds).

While the thread reads, the loop does not watch the pipe: the thread owns the
descriptor until it returns. The descriptor stays non-blocking; the thread waits
with ``poll`` between reads.
"""

from __future__ import annotations

import os
import select
from typing import TYPE_CHECKING, Final

from ._fresh_objects import new_bytes, new_text
from ._pieces import load_pieces
from ._protocol import (
    BIG_HEAD,
    PIECE_HEADER,
    FrameKind,
    Outcome,
    decode_frame,
    text_shape,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ("FrameRead", "read_big_frame")

_POLL_MS: Final = 1000

FrameRead = tuple[tuple[int, Outcome, float, object] | None, bytes]
"""What :func:`read_big_frame` returns: the decoded outcome (``None`` at end of file), and
the bytes read past the frame."""


class _Source:
    """The pipe, behind the bytes the loop already took off it."""

    __slots__ = ("consumed", "fd", "poller", "prefix")

    def __init__(self, fd: int, prefix: bytes) -> None:
        self.consumed = 0
        self.fd = fd
        self.prefix = memoryview(prefix)
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def fill(self, view: memoryview) -> None:
        """Fill *view* exactly; EOFError if the pipe ends first (the worker is gone)."""
        taken = min(len(self.prefix), len(view))
        if taken:
            view[:taken] = self.prefix[:taken]
            self.prefix = self.prefix[taken:]
        filled = taken
        while filled < len(view):
            try:
                got = os.readv(self.fd, [view[filled:]])  # the GIL is released while it reads
            except BlockingIOError:
                self.poller.poll(_POLL_MS)
                continue
            if got == 0:
                raise EOFError
            filled += got
        self.consumed += filled

    def skip(self, size: int) -> None:
        """Read *size* bytes and drop them."""
        scratch = memoryview(bytearray(min(size, 1 << 20)))
        while size > 0:
            step = min(size, len(scratch))
            self.fill(scratch[:step])
            size -= step

    def take(self, size: int) -> bytes:
        buffer = bytearray(size)
        self.fill(memoryview(buffer))
        return bytes(buffer)


def read_big_frame(fd: int, length: int, seq: int, kind: FrameKind, prefix: bytes) -> FrameRead:
    """
    Read and decode the rest of one big outcome frame (blocking; call from a thread).

    Args:
        fd: The slot's result pipe (non-blocking; owned by this call until it returns).
        length: The frame's payload length, from its header.
        seq: The call's sequence number, from its header.
        kind: How the payload is laid out.
        prefix: Payload bytes already read past the header (possibly beyond the
            frame, into the next ones).

    Returns:
        ``((seq, status, seconds, value), rest)``: a payload that cannot be decoded
        becomes the call's error, as :func:`._protocol.decode_frame` does; *rest* is
        what was read past the frame. ``(None, b"")`` if the pipe ended first.
    """
    source = _Source(fd, prefix)
    try:
        outcome = _read(source, length, seq, kind)
    except EOFError:
        return None, b""
    return outcome, bytes(source.prefix)


def _read(
    source: _Source, length: int, seq: int, kind: FrameKind
) -> tuple[int, Outcome, float, object]:
    if kind is FrameKind.PICKLED:
        payload, view = new_bytes(length)
        source.fill(view)
        view.release()
        return decode_frame(seq, payload)  # type: ignore[arg-type]
    seconds, detail = BIG_HEAD.unpack(source.take(BIG_HEAD.size))
    size = length - BIG_HEAD.size
    value: object
    if kind is FrameKind.TEXT:
        try:
            chars, maxchar, codec = text_shape(detail, size)
        except (KeyError, ValueError) as exc:  # a corrupt frame: skip it, fail the call
            source.skip(size)
            return seq, Outcome.ERROR, seconds, ValueError(f"undecodable text result: {exc!r}")
        text, view = new_text(chars, maxchar)
        source.fill(view)
        view.release()
        value = text if isinstance(text, str) else str(text, codec, "surrogatepass")
        return seq, Outcome.OK, seconds, value
    if kind is FrameKind.BYTES:
        body, view = new_bytes(size)
        source.fill(view)
        view.release()
        return seq, Outcome.OK, seconds, body if isinstance(body, bytes) else bytes(body)
    start = source.consumed
    try:
        value = load_pieces(_pieces(source, size), as_tuple=bool(detail))
    except EOFError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an item's class is not importable here
        source.skip(size - source.consumed + start)
        return seq, Outcome.ERROR, seconds, exc
    return seq, Outcome.OK, seconds, value


def _pieces(source: _Source, size: int) -> Iterator[bytes]:
    """
    Read a :attr:`FrameKind.PIECES` body one piece at a time, so that no buffer as big as
    the whole is allocated (and freed in one ``munmap`` under the GIL).
    """
    end = source.consumed + size
    while source.consumed < end:
        (length,) = PIECE_HEADER.unpack(source.take(PIECE_HEADER.size))
        piece, view = new_bytes(length)
        source.fill(view)
        view.release()
        yield piece  # type: ignore[misc]
