"""
Pickling a call for a worker process, once, with an error that names the culprit.

Covers: :func:`pickle_call` (the ``(func, args)`` pair to bytes, the form the local
lane sends to its workers so the work is done once, not checked and then done
again), :func:`estimate_call_bytes` and :func:`pickle_call_spilled` (big calls,
pickled off the event loop), :func:`check_picklable` (the same check for backends
that pickle on their own, such as :mod:`._dask._lane`), :func:`load_call` (the worker
side, defined in :mod:`._call_loading` with :func:`discard_spill`, re-exported
here), :func:`describe_callable` (a short name for error messages), and the
opt-in by-value serializer (:func:`by_value_serializer`, :func:`prepare_call`:
cloudpickle for lambdas and functions defined in ``__main__``). Does not
cover: how results travel back (:mod:`._local._worker`) or where calls run
(:mod:`._local._lane`).

Cost: one ``pickle.dumps`` of ``(func, args)`` with the standard library pickle
(about 2-5 us for a module-level function and a few small arguments). Only when it
fails is each part pickled on its own, to name what could not be pickled; that
slow path never runs for a good call.

Big calls. Pickling holds the GIL for the whole ``dumps`` (it is one C call), so
pickling a 64 MiB argument in a thread stalls the event loop as long as pickling
it on the loop would (measured: 33 ms either way). :func:`pickle_call_spilled`
therefore keeps big buffers out of the pickle: ``bytes`` and ``bytearray``
arguments above :data:`SPILL_BYTES`, and every protocol-5 buffer (NumPy arrays),
are written to a temporary file with ``os.write`` in 1 MiB pieces (the GIL is
released during each write), and the pickle sent to the worker only names the
file. A big ``str`` argument is encoded to UTF-8 in pieces and travels the same
way, and so does a long ``list`` or ``tuple`` argument, pickled a slice of about
256 KiB at a time (:mod:`._local._pieces`), so the loop gets the GIL between
slices; their pieces are written to the file as they are made and freed at once
(held together and freed at the end, 500 MiB of them went back to the system
in one ``munmap`` that held the loop for about 19 ms). The worker reads them
back in :func:`load_call`. Other big objects (a
big ``dict``, a big ``str`` inside a container, one huge item inside a list) are
pickled in the thread in one ``pickle.dumps``, which holds the GIL, and so the
event loop, for as long as it runs: their shape cannot be split from outside.
"""

from __future__ import annotations

import functools
import os
import pickle
import tempfile
import types
from typing import TYPE_CHECKING, Final, Literal

from .._exceptions import UnpicklableError
from ._call_loading import (
    Spilled,
    discard_spill,
    load_call,
    rebuild_bytes,
    rebuild_pieces,
    rebuild_text,
)
from ._local._pieces import PIECE_HEADER, Pacer, iter_pieces, piece_worthy
from ._local._spill import spill_prefix

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = (
    "OFFLOAD_BYTES",
    "Serializer",
    "by_value_serializer",
    "check_picklable",
    "describe_callable",
    "discard_spill",
    "estimate_call_bytes",
    "load_call",
    "pickle_call",
    "pickle_call_spilled",
    "prepare_call",
)

OFFLOAD_BYTES: Final = 128 * 1024
"""
Calls whose arguments look bigger than this are pickled off the event loop.

Measured (``benchmarks/dask_backend.py`` payload table, and on this 2-core VM):
pickling on the loop costs about 0.6-1.4 ms per MiB (1 MiB: 0.7-2.7 ms, 16 MiB:
10-23 ms), so 128 KiB stays near 0.1-0.2 ms, inside the library's one millisecond
per loop tick; below it, the thread handoff (about 50-100 us) would cost a small
call more than the pickling it saves. Do not raise it without a loop-lag run.
"""
SPILL_BYTES: Final = 64 * 1024
"""A ``bytes``/``bytearray`` argument at least this big travels out of band."""
_WRITE_PIECE: Final = 1024 * 1024
_ENCODE_PIECE: Final = 256 * 1024  # characters of a big str encoded at a time
_ITEM_BYTES: Final = 8  # the least a pickled container item costs
_SAMPLE: Final = 4  # container items looked at to estimate the rest

# What pickling an arbitrary object may raise: PicklingError for lambdas and
# local objects, TypeError for locks and sockets, AttributeError for some local
# classes, RecursionError for very deep structures.
_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError)


def describe_callable(func: object) -> str:
    """
    Return a short, readable name for *func*: ``module.qualname``, seen through partials.

    Args:
        func: Any callable (a function, a :func:`functools.partial`, a callable object).

    Returns:
        A name such as ``"tests._workers.square"`` or ``"partial(tests._workers.add)"``.
    """
    if isinstance(func, functools.partial):
        return f"partial({describe_callable(func.func)})"
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def pickle_call(func: Callable[..., object], args: tuple[object, ...]) -> bytes:
    """
    Pickle ``(func, args)`` into the bytes a worker runs with :func:`load_call`.

    Args:
        func: The callable, pickled by reference (it must be importable by name).
        args: Its positional arguments.

    Returns:
        The pickled pair (highest protocol).

    Raises:
        UnpicklableError: If the pair cannot be pickled. Its ``what`` names the
            function (``"the function tests.f.<locals>.<lambda>"``) or the first bad
            argument (``"argument 2 (type _thread.lock)"``, counted from 1); the
            pickling error is the ``__cause__``.
    """
    try:
        return pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)
    except _PICKLE_ERRORS as exc:
        raise _diagnose(func, args, exc) from exc


Serializer = Literal["pickle", "cloudpickle"]
"""How the local lane sends functions: by reference (pickle) or by value (cloudpickle)."""


def by_value_serializer(serializer: Serializer) -> Callable[[object], bytes] | None:
    """
    Return cloudpickle's ``dumps`` for ``"cloudpickle"``, ``None`` for ``"pickle"``.

    Args:
        serializer: The ``concurrency.serializer`` setting.

    Returns:
        The by-value ``dumps`` for :func:`prepare_call`, or ``None``.

    Raises:
        ImportError: If ``"cloudpickle"`` is asked for and it is not installed; the
            message names the extra.
    """
    if serializer == "pickle":
        return None
    try:
        import cloudpickle  # the optional extra, imported only when chosen
    except ImportError as exc:
        raise ImportError(
            "concurrency.serializer 'cloudpickle' needs the 'cloudpickle' extra: "
            "pip install 'resource-supervisor[cloudpickle]'"
        ) from exc
    dumps: Callable[[object], bytes] = cloudpickle.dumps
    return dumps


def prepare_call(
    func: Callable[..., object],
    args: tuple[object, ...],
    dumps: Callable[[object], bytes] | None,
) -> tuple[Callable[..., object], tuple[object, ...]]:
    """
    Make a call's function, and callable arguments, travel by value (cloudpickle).

    With *dumps* ``None`` (the default ``pickle`` serializer) the call is returned
    unchanged. Otherwise the function, and every argument that is a function, a
    class or a :func:`functools.partial`, is replaced by an object that pickles as
    ``pickle.loads(<cloudpickle bytes>)``: a lambda or a function defined in a
    notebook's ``__main__`` reaches the worker, which needs cloudpickle installed.
    Other arguments still use the standard pickle (big buffers still spill). Each
    call pays cloudpickle's ``dumps`` in the service and a ``loads`` in the worker.

    Args:
        func: The callable.
        args: Its positional arguments.
        dumps: From :func:`by_value_serializer`.

    Returns:
        ``(func, args)`` to hand to :func:`pickle_call` or :func:`pickle_call_spilled`.

    Raises:
        UnpicklableError: If cloudpickle cannot serialize the function or an argument.
    """
    if dumps is None:
        return func, args
    name = describe_callable(func)
    try:
        sent = _ByValue(dumps(func))
        sent_args = tuple(
            _ByValue(dumps(arg)) if isinstance(arg, _BY_VALUE_TYPES) else arg for arg in args
        )
    except _PICKLE_ERRORS as exc:
        raise UnpicklableError(f"the function {name} or a callable argument", str(exc)) from exc
    return sent, sent_args  # type: ignore[return-value]


_BY_VALUE_TYPES: Final = (types.FunctionType, types.BuiltinFunctionType, type, functools.partial)


class _ByValue:
    """A by-value (cloudpickle) object; it unpickles as the object itself."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Callable[[bytes], object], tuple[bytes]]:
        return pickle.loads, (self.data,)


def estimate_call_bytes(func: Callable[..., object], args: tuple[object, ...]) -> int:
    """
    Estimate the pickled size of ``(func, args)`` cheaply, without pickling.

    Sizes come from ``len()`` of bytes, bytearray and str, ``nbytes`` of memoryviews
    and array-like objects, the buffer protocol, and the length of containers
    (sampling a few items, two levels deep). Arguments bound in a
    :func:`functools.partial` count too. A lower bound for unknown objects.

    Args:
        func: The callable.
        args: Its positional arguments.

    Returns:
        Estimated bytes (microseconds to compute for a few small arguments).
    """
    total = sum(_estimate(arg, 2) for arg in args)
    while isinstance(func, functools.partial):
        total += sum(_estimate(arg, 2) for arg in func.args)
        total += sum(_estimate(value, 2) for value in func.keywords.values())
        func = func.func
    return total


def _estimate(value: object, depth: int) -> int:
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, (int, float, type(None))):
        return _ITEM_BYTES
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        n = len(value)
        if n == 0 or depth <= 0:
            return n * _ITEM_BYTES
        items = value.items() if isinstance(value, dict) else value
        sample = [
            _estimate(item, depth - 1) for _, item in zip(range(_SAMPLE), items, strict=False)
        ]
        return n * _ITEM_BYTES + sum(sample) * n // len(sample)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        with memoryview(value) as view:  # type: ignore[arg-type]
            return view.nbytes
    except TypeError:
        return _ITEM_BYTES


class _OutOfBand:
    """Wraps a big ``bytes``/``bytearray`` argument so pickle passes it out of band."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        return rebuild_bytes, (pickle.PickleBuffer(self.value), type(self.value) is bytes)


class _Streamed:
    """
    An argument written to the spill file piece by piece as it is encoded, never whole.

    It pickles as one out-of-band buffer, an empty marker that
    :func:`pickle_call_spilled` replaces by the pieces of :meth:`parts` in the file.
    Why: the pieces of a 500 MiB argument held together would take 500 MiB more,
    and freeing them at the end gives the heap back in one go (a ``munmap`` of
    hundreds of MiB that holds the GIL, so the event loop, for tens of ms); streamed,
    each piece is freed as soon as it is written.
    """

    __slots__ = ("marker",)

    def __init__(self) -> None:
        self.marker = bytearray()

    def parts(self) -> Iterator[bytes]:
        """Yield the bytes that stand for the marker in the spill file, in order."""
        raise NotImplementedError


class _OutOfBandText(_Streamed):
    """
    A big ``str`` argument, encoded to UTF-8 in pieces so that it too travels out of band.

    Pickling a ``str`` encodes it in one C call that holds the GIL throughout (a
    500 MiB string held the event loop for about 2 s, even from a thread);
    encoding 256 Ki characters at a time lets the GIL switch between pieces.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def parts(self) -> Iterator[bytes]:
        text, pace = self.text, Pacer()
        for start in range(0, len(text), _ENCODE_PIECE):
            yield text[start : start + _ENCODE_PIECE].encode("utf-8", "surrogatepass")
            pace()

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        return rebuild_text, (pickle.PickleBuffer(self.marker),)


class _OutOfBandPieces(_Streamed):
    """
    A long list or tuple argument, pickled a slice at a time (:mod:`._local._pieces`)
    so that the GIL goes to the event loop between slices; the pieces travel out of band.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[object] | tuple[object, ...]) -> None:
        super().__init__()
        self.items = items

    def parts(self) -> Iterator[bytes]:
        for piece in iter_pieces(self.items):
            yield PIECE_HEADER.pack(len(piece))
            yield piece

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        return rebuild_pieces, (type(self.items) is tuple, pickle.PickleBuffer(self.marker))


def _out_of_band(arg: object) -> object:
    """Wrap a big bytes, bytearray, str, list or tuple argument so that it travels out of band."""
    kind = type(arg)
    if kind in (bytes, bytearray) and len(arg) >= SPILL_BYTES:  # type: ignore[arg-type]
        return _OutOfBand(arg)  # type: ignore[arg-type]
    if kind is str and len(arg) >= SPILL_BYTES:  # type: ignore[arg-type]
        return _OutOfBandText(arg)  # type: ignore[arg-type]
    if piece_worthy(arg) and _estimate(arg, 1) >= SPILL_BYTES:
        return _OutOfBandPieces(arg)  # type: ignore[arg-type]
    return arg


def pickle_call_spilled(
    func: Callable[..., object], args: tuple[object, ...]
) -> tuple[bytes, str | None]:
    """
    Pickle a big call with its big buffers in a temporary file (blocking; in a thread).

    Args:
        func: The callable.
        args: Its positional arguments.

    Returns:
        The bytes for :func:`load_call`, and the temporary file's path (``None``
        when nothing was big enough to spill); remove it with :func:`discard_spill`
        once the call is settled.

    Raises:
        UnpicklableError: As :func:`pickle_call`.
    """
    wrapped = tuple(_out_of_band(arg) for arg in args)
    buffers: list[pickle.PickleBuffer] = []
    try:
        header = pickle.dumps((func, wrapped), protocol=5, buffer_callback=buffers.append)
    except _PICKLE_ERRORS as exc:
        raise _diagnose(func, args, exc) from exc
    if not buffers:
        return header, None
    streamed = {id(w.marker): w for w in wrapped if isinstance(w, _Streamed)}
    fd, path = tempfile.mkstemp(prefix=spill_prefix())  # swept if the service dies
    try:
        sizes = []
        for buffer in buffers:
            with buffer.raw() as view:
                stream = streamed.get(id(view.obj))
                if stream is None:
                    sizes.append(_write_all(fd, view))
                else:  # each part is freed once written
                    sizes.append(sum(_write_all(fd, memoryview(p)) for p in stream.parts()))
    except BaseException:
        os.close(fd)
        discard_spill(path)
        raise
    os.close(fd)
    spilled = Spilled(header, path, tuple(sizes))
    return pickle.dumps(spilled, protocol=pickle.HIGHEST_PROTOCOL), path


def _write_all(fd: int, view: memoryview) -> int:
    """Write *view* whole, 1 MiB at a time (``os.write`` releases the GIL); return its size."""
    for start in range(0, view.nbytes, _WRITE_PIECE):
        piece = view[start : start + _WRITE_PIECE]
        while piece:
            piece = piece[os.write(fd, piece) :]
    return view.nbytes


def check_picklable(func: Callable[..., object], args: tuple[object, ...]) -> None:
    """
    Fail fast if ``(func, args)`` cannot be sent to a worker process.

    For a backend that pickles calls itself; the local lane uses :func:`pickle_call`
    and sends the bytes it produced, so it pays for pickling once.

    Args:
        func: The callable.
        args: Its positional arguments.

    Raises:
        UnpicklableError: As :func:`pickle_call`.
    """
    # Pickle into a writer that discards: the pickler hands large bytes-like
    # payloads to write() without copying them, so checking a 16 MiB argument costs
    # microseconds instead of the ~7 ms a copy into a bytes object takes on the loop.
    try:
        pickle.Pickler(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump((func, args))
    except _PICKLE_ERRORS as exc:
        raise _diagnose(func, args, exc) from exc


class _Discard:
    """A binary file that drops everything written to it."""

    __slots__ = ()

    def write(self, data: bytes | memoryview) -> int:
        return len(data)


def _diagnose(
    func: Callable[..., object], args: tuple[object, ...], exc: BaseException
) -> UnpicklableError:
    """Pickle each part alone to name what failed (slow path, failures only)."""
    name = describe_callable(func)
    try:
        pickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except _PICKLE_ERRORS as func_exc:
        return UnpicklableError(f"the function {name}", str(func_exc))
    for position, arg in enumerate(args, start=1):
        try:
            pickle.dumps(arg, protocol=pickle.HIGHEST_PROTOCOL)
        except _PICKLE_ERRORS as arg_exc:
            kind = f"{type(arg).__module__}.{type(arg).__qualname__}"
            return UnpicklableError(f"argument {position} (type {kind}) of {name}", str(arg_exc))
    return UnpicklableError(f"the arguments of {name}", str(exc))
