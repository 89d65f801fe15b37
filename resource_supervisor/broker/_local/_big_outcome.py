"""
Outcomes too big for the result pipe travel through a temporary file, decoded off the loop.

Covers: :class:`BigOutcome` (what a worker returns through its executor instead
of the outcome itself), :func:`spill_outcome` (worker side: write the outcome to
a spill file) and :func:`load_outcome` (parent side, in the executor's manager
thread: read and decode it, remove the file). Does not cover: the atomic pipe
frames of small outcomes (:mod:`._protocol`), big call arguments
(:mod:`.._pickling`) or sweeping spill files of a dead service (:mod:`._spill`).

Why a file: an outcome sent through the executor's result queue is copied
several times in the parent while the GIL is held (the queue's message buffer,
its unpickling, then the outcome's own unpickling), so a 500 MiB result held
the event loop for about a third of a second. Read from a file with a single
``os.read``, which allocates the ``bytes`` object and fills it with the GIL
released, a ``bytes`` result is never copied under the GIL at all: it is
written raw. Any other big outcome is pickled into the file and unpickled from
the bytes read, one copy under the GIL (about 0.1 ms per MiB) in the executor's
manager thread, never on the event loop.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Final, NamedTuple

from ._protocol import Outcome, remote_outcome
from ._spill import spill_prefix

__all__ = ("BigOutcome", "load_outcome", "spill_outcome")

_WRITE_PIECE: Final = 1024 * 1024


class BigOutcome(NamedTuple):
    """Where a big outcome waits: its file, size, the call's time, and how it is stored."""

    path: str
    size: int
    seconds: float
    raw: bool
    """The file holds a ``bytes`` result as is (else the pickled outcome)."""


def spill_outcome(
    data: bytes, *, raw: bool, seconds: float, owner: int, directory: str | None
) -> BigOutcome:
    """
    Write an outcome to a spill file named for the service (worker side).

    Args:
        data: The ``bytes`` result itself (*raw*), or the pickled outcome.
        raw: Whether *data* is the result itself.
        seconds: Time the call ran.
        owner: The service's pid (the file's name carries it, see :mod:`._spill`).
        directory: The service's temporary directory.

    Returns:
        What the parent needs to load it.
    """
    fd, path = tempfile.mkstemp(prefix=spill_prefix(owner), dir=directory)
    try:
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_PIECE):
            piece = view[start : start + _WRITE_PIECE]
            while piece:
                piece = piece[os.write(fd, piece) :]
    finally:
        os.close(fd)
    return BigOutcome(path, len(data), seconds, raw)


def _read_all(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size)  # one allocation, filled with the GIL released
        if len(data) < size:  # pragma: no cover - a regular file is read whole
            parts = [data]
            while sum(map(len, parts)) < size:
                part = os.read(fd, size)
                if not part:
                    break
                parts.append(part)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)
        os.unlink(path)


def load_outcome(big: BigOutcome) -> tuple[Outcome, float, object]:
    """
    Read a spilled outcome and remove its file (parent side, off the event loop).

    Args:
        big: What the worker returned.

    Returns:
        ``(status, seconds, value)`` as :func:`._protocol.decode_outcome`; a file that
        cannot be read or decoded becomes the call's error.
    """
    try:
        data = _read_all(big.path, big.size)
        if big.raw:
            return Outcome.OK, big.seconds, data
        status, seconds, value = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - e.g. the result's class is not importable here
        return Outcome.ERROR, big.seconds, exc
    return remote_outcome(status, seconds, value)
