"""
The worker's half of a pickled call: loading it, and the pieces its pickle refers to.

Covers: :func:`load_call` (the bytes :func:`._pickling.pickle_call` or
:func:`._pickling.pickle_call_spilled` produced, back to ``(func, args)``), the
record of a spilled call (:class:`Spilled`), the rebuilders that out-of-band
arguments pickle to, and :func:`discard_spill`. Does not cover: pickling calls,
naming what cannot be pickled, or the by-value serializer (:mod:`._pickling`,
service side).

Why a module of its own: workers and the lane's forkserver import only this
half, not the service's (its error diagnosis and estimates, and the package's
exception classes), which is less to load, or to compile where no bytecode cache
exists, before the first call of a cold service.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import TYPE_CHECKING, NamedTuple

from ._local._pieces import load_pieces, split_blob

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "Spilled",
    "discard_spill",
    "load_call",
    "rebuild_bytes",
    "rebuild_pieces",
    "rebuild_text",
)


class Spilled(NamedTuple):
    """What the worker gets instead of a big call: a small pickle and its buffers' file."""

    # a NamedTuple, not a dataclass: dataclasses pulls in inspect and ast (a few
    # ms of every worker's cold start)
    header: bytes
    path: str
    sizes: tuple[int, ...]


def rebuild_bytes(buffer: object, as_bytes: bool) -> bytes | bytearray:  # noqa: FBT001 - pickled
    """Rebuild an out-of-band ``bytes`` (*as_bytes*) or ``bytearray`` argument."""
    view = memoryview(buffer)  # type: ignore[arg-type]
    return bytes(view) if as_bytes else bytearray(view)


def rebuild_pieces(as_tuple: bool, blob: object) -> list[object] | tuple[object, ...]:  # noqa: FBT001 - pickled
    """Rebuild a list (a tuple if *as_tuple*) argument from its pieces laid end to end."""
    return load_pieces(split_blob(memoryview(blob)), as_tuple=as_tuple)  # type: ignore[arg-type]


def rebuild_text(buffer: object) -> str:
    """Rebuild an out-of-band ``str`` argument from its UTF-8 bytes."""
    return str(memoryview(buffer), "utf-8", "surrogatepass")  # type: ignore[arg-type]


def discard_spill(path: str | None) -> None:
    """
    Remove a spilled call's file; a missing one is fine.

    Args:
        path: The path :func:`._pickling.pickle_call_spilled` returned, or ``None``.
    """
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def load_call(payload: bytes) -> tuple[Callable[..., object], tuple[object, ...]]:
    """
    Unpickle what :func:`._pickling.pickle_call` produced (runs in the worker).

    Args:
        payload: Bytes from :func:`._pickling.pickle_call` or
            :func:`._pickling.pickle_call_spilled`.

    Returns:
        The ``(func, args)`` pair.
    """
    call = pickle.loads(payload)
    if isinstance(call, Spilled):
        with open(call.path, "rb") as file:
            data = memoryview(file.read())
        discard_spill(call.path)  # read once; the parent's own discard is then a no-op
        offsets = [0]
        for size in call.sizes:
            offsets.append(offsets[-1] + size)
        buffers = [data[offsets[i] : offsets[i + 1]] for i in range(len(call.sizes))]
        call = pickle.loads(call.header, buffers=buffers)
    func, args = call
    return func, args
