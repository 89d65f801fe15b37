"""
The progress memory a worker slot shares with its worker, without ``ctypes``.

Covers: :func:`shared_progress`, which returns :class:`SharedInt` (the sequence
number of the call the worker runs) and :class:`SharedFlags` (one withdrawal flag
per batch position) over one block of ``multiprocessing``'s shared heap. Does not
cover: what the values mean and the lock that guards them (:mod:`._worker`,
:mod:`._stopping`), or the slot that holds them (:mod:`._slot`).

Why not ``RawValue`` and ``RawArray``: they need ``multiprocessing.sharedctypes``,
which imports ``ctypes``, a few milliseconds in the service at its first process
call and again in the lane's forkserver before it forks the first worker, both on
the way to the first result. The same shared memory (a block of
``multiprocessing.heap``, an ``mmap`` of a file in ``/dev/shm`` whose descriptor
travels to the worker as ``RawValue``'s does) is read and written here through
``memoryview`` casts: the 8-byte counter is 8-aligned (the heap aligns blocks to
8 bytes), so a store is one machine write, as with ``ctypes``.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import multiprocessing.heap
from typing import Final

__all__ = ("SharedFlags", "SharedInt", "shared_progress")

_INT_BYTES: Final = 8


class SharedInt:
    """A signed 64-bit integer in shared memory (the shape of ``RawValue("q")``)."""

    __slots__ = ("_view", "_wrapper")

    def __init__(self, wrapper: multiprocessing.heap.BufferWrapper) -> None:
        self._wrapper = wrapper  # owns the block: it returns to the heap with the wrapper
        self._view = wrapper.create_memoryview()[:_INT_BYTES].cast("q")

    @property
    def value(self) -> int:
        """The integer."""
        return int(self._view[0])

    @value.setter
    def value(self, value: int) -> None:
        self._view[0] = value

    def __reduce__(self) -> tuple[type[SharedInt], tuple[multiprocessing.heap.BufferWrapper]]:
        # the wrapper pickles as its shared file's descriptor while a worker is spawned
        return SharedInt, (self._wrapper,)


class SharedFlags:
    """Signed bytes in shared memory (the shape of ``RawArray("b", n)``)."""

    __slots__ = ("_view", "_wrapper")

    def __init__(self, wrapper: multiprocessing.heap.BufferWrapper) -> None:
        self._wrapper = wrapper
        self._view = wrapper.create_memoryview()[_INT_BYTES:].cast("b")

    def __len__(self) -> int:
        return len(self._view)

    def __getitem__(self, index: int, /) -> int:
        return int(self._view[index])

    def __setitem__(self, index: int, value: int, /) -> None:
        self._view[index] = value

    def __reduce__(self) -> tuple[type[SharedFlags], tuple[multiprocessing.heap.BufferWrapper]]:
        return SharedFlags, (self._wrapper,)


def shared_progress(start: int, flags: int) -> tuple[SharedInt, SharedFlags]:
    """
    Allocate a slot's progress counter and withdrawal flags in one shared block.

    Args:
        start: The counter's first value.
        flags: How many flags (all 0 at first).

    Returns:
        The counter and the flags; both keep the block alive, and a worker given
        both in one pickle (its start arguments) receives the block once.

    Raises:
        ValueError: If *flags* is negative.
    """
    if flags < 0:
        raise ValueError("flags must not be negative")
    wrapper = multiprocessing.heap.BufferWrapper(_INT_BYTES + flags)
    view = wrapper.create_memoryview()
    view[:] = bytes(len(view))  # a reused block may hold a previous slot's values
    counter = SharedInt(wrapper)
    counter.value = start
    return counter, SharedFlags(wrapper)
