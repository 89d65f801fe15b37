"""
A long list or tuple pickled in pieces, so that no single ``pickle`` call holds the GIL long.

Covers: :func:`pickle_pieces` (a list or tuple to a few hundred KiB pickles of
consecutive slices), :func:`load_pieces` (the pieces back to one list or tuple)
and :func:`piece_worthy` (which values are long enough to be worth it). Does not
cover: where the pieces travel (a call's spill file, :mod:`.._pickling`; an
outcome frame, :mod:`._protocol`).

Why: ``pickle.dumps`` and ``pickle.loads`` are single C calls that keep the GIL
for their whole run, so pickling a 500 MiB list of small ``bytes`` in a thread
stalls the event loop as long as pickling it on the loop would (more than a
second on a small VM). Pickled a slice at a time, each call lasts about
:data:`PIECE_BYTES` worth of work, and a waiting thread (the event loop) gets the
GIL between pieces (sooner with a :class:`Pacer`). What it does not bound: one
item that is itself huge (a 100 MiB ``bytes`` inside the list) is still one C call.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import pickle
import struct
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = (
    "PACE_SECONDS",
    "PIECE_BYTES",
    "PIECE_HEADER",
    "PIECE_MIN_ITEMS",
    "Pacer",
    "iter_pieces",
    "load_pieces",
    "pickle_pieces",
    "piece_worthy",
    "split_blob",
)

PIECE_BYTES: Final = 256 * 1024
"""About how big one piece's pickle is (a fraction of a millisecond to load)."""
PIECE_MIN_ITEMS: Final = 1024
"""A list or tuple with fewer items is pickled whole."""
PIECE_HEADER: Final = struct.Struct("!Q")
"""Prefix of one pickled piece where pieces are laid end to end: its length."""
_FIRST_PIECE: Final = 64  # items in the first piece, before the sizes are known
PACE_SECONDS: Final = 0.002
"""How long a :class:`Pacer` lets its thread work before it lets the GIL go."""


class Pacer:
    """
    Let the GIL go (``time.sleep(0)``) once per :data:`PACE_SECONDS` of work.

    A thread that runs Python code without pause keeps the GIL until the event
    loop's thread has waited the interpreter's switch interval (5 ms by default)
    and asked for it; letting it go every 2 ms of work hands it over sooner, for
    about 50 us each time.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def __call__(self) -> None:
        """Called between two steps of work: lets the GIL go if it is time."""
        now = time.perf_counter()
        if now - self._last >= PACE_SECONDS:
            time.sleep(0)  # releases the GIL: a thread waiting for it takes it
            self._last = time.perf_counter()


def piece_worthy(value: object) -> bool:
    """Return True for a plain ``list`` or ``tuple`` of at least :data:`PIECE_MIN_ITEMS` items."""
    return type(value) in (list, tuple) and len(value) >= PIECE_MIN_ITEMS  # type: ignore[arg-type]


def pickle_pieces(items: Sequence[object]) -> list[bytes]:
    """
    Pickle *items* as consecutive slices of about :data:`PIECE_BYTES` each.

    Args:
        items: A list or tuple.

    Returns:
        The pickled slices, in order (each a pickled ``list``).

    Raises:
        Exception: Whatever ``pickle.dumps`` raises for an item.
    """
    return list(iter_pieces(items))


def iter_pieces(items: Sequence[object]) -> Iterator[bytes]:
    """
    Pickle *items* a slice at a time, as :func:`pickle_pieces`, yielding each piece as it is
    made (so that a caller writing them out never holds them all).

    Args:
        items: A list or tuple.

    Yields:
        The pickled slices, in order.
    """
    start, count, total = 0, _FIRST_PIECE, len(items)
    pace = Pacer()
    while start < total:
        pace()
        piece = pickle.dumps(list(items[start : start + count]), protocol=pickle.HIGHEST_PROTOCOL)
        yield piece
        start += count
        # aim the next slice at PIECE_BYTES from this one's bytes per item, growing at most 4x
        per_item = max(1, len(piece) // count)
        count = max(1, min(count * 4, PIECE_BYTES // per_item))


def split_blob(blob: memoryview) -> list[memoryview]:
    """Return the pieces of *blob*, each prefixed by :data:`PIECE_HEADER`, laid end to end."""
    pieces: list[memoryview] = []
    offset, end = 0, len(blob)
    while offset < end:
        (length,) = PIECE_HEADER.unpack_from(blob, offset)
        offset += PIECE_HEADER.size
        pieces.append(blob[offset : offset + length])
        offset += length
    return pieces


def load_pieces(
    pieces: Iterable[bytes | memoryview], *, as_tuple: bool
) -> list[object] | tuple[object, ...]:
    """
    Unpickle :func:`pickle_pieces` output back into one sequence.

    Args:
        pieces: The pickled slices, in order.
        as_tuple: Return a ``tuple`` (else a ``list``).

    Returns:
        The items, in order.
    """
    items: list[object] = []
    pace = Pacer()
    for piece in pieces:
        items.extend(pickle.loads(piece))
        pace()
    return tuple(items) if as_tuple else items
