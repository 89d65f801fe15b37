"""
A new ``bytes`` or ``str`` whose storage a read fills with the GIL released (service side).

Covers: :func:`new_bytes` and :func:`new_text`: an object of a given size, not yet
shared with anything, and a writable view of its storage. Does not cover: the
reading itself (:mod:`._big_frames`) or the wire format (:mod:`._protocol`).

Why: a 500 MiB result must become one ``bytes`` or ``str`` object, and building one
from pieces copies it while the GIL is held (on a small VM, more than half a
second for 500 MiB: the copy touches every page for the first time). CPython's C
API makes such objects the way this module does: ``PyBytes_FromStringAndSize(NULL,
n)`` and ``PyUnicode_New(n, maxchar)`` allocate an object whose contents the
caller then writes before anyone else sees it (``os.read`` itself works so). The
view handed out here points at that storage, so ``os.readv`` fills the object
from the pipe in the kernel, with the GIL released, page faults included: nothing
is copied under the GIL. The view keeps its object alive; it must be released
before the object is handed on, so that nothing writes to a ``bytes`` or ``str``
someone else holds.

Where that is not available (not CPython, or the object layout does not check
out at first use), the objects are built the ordinary way: the data is read into
a ``bytearray`` and copied once into the result, under the GIL (:func:`available`
tells which).

Imports ``ctypes`` on first use: only the service loads this module, never a worker.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("available", "new_bytes", "new_text")

_CHECK: Final = b"fresh objects \xe9\xff"


class _Api:
    """The two C functions, found once."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        bytes_new = ctypes.pythonapi.PyBytes_FromStringAndSize
        bytes_new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        bytes_new.restype = ctypes.py_object
        text_new = ctypes.pythonapi.PyUnicode_New
        text_new.argtypes = (ctypes.c_ssize_t, ctypes.c_uint32)
        text_new.restype = ctypes.py_object
        self.bytes_new: Callable[[None, int], bytes] = bytes_new
        self.text_new: Callable[[int, int], str] = text_new

    def view(self, obj: object, offset: int, size: int) -> memoryview:
        array = (self.ctypes.c_char * size).from_address(id(obj) + offset)
        array._owner = obj  # type: ignore[attr-defined] # the storage lives while any view does
        return memoryview(array).cast("B")


_API: list[_Api | None] = []  # [] until first use, then [api] or [None]


def _api() -> _Api | None:
    if not _API:
        _API.append(_checked())
    return _API[0]


def _checked() -> _Api | None:
    """The C functions, if this interpreter is CPython and the objects' layout checks out."""
    if sys.implementation.name != "cpython":
        return None
    api: _Api | None = None
    try:
        api = _Api()
        _API.append(api)  # let the checks below use it
        made, view = new_bytes(len(_CHECK))
        view[:] = _CHECK
        view.release()
        text, view = new_text(len(_CHECK), 0xFF)
        view[:] = _CHECK
        view.release()
        wide, view = new_text(2, 0x10FFFF)
        view[:] = "\U0001f600\ud800".encode("utf-32-le", "surrogatepass")
        view.release()
        good = (
            made == _CHECK
            and text == _CHECK.decode("latin-1")
            and wide == "\U0001f600\ud800"
            and hash(text) == hash(_CHECK.decode("latin-1"))
        )
    except Exception:  # noqa: BLE001 - any surprise means: build objects the ordinary way
        good = False
    finally:
        _API.clear()
    return api if good else None


def available() -> bool:
    """Return True when objects are filled in place (else they are copied once)."""
    return _api() is not None


def new_bytes(size: int) -> tuple[bytes | bytearray, memoryview]:
    """
    Return a new object of *size* bytes and a writable view of all of them.

    Args:
        size: The length.

    Returns:
        ``(object, view)``: a ``bytes`` filled in place where :func:`available`,
        else a ``bytearray`` (call ``bytes()`` on it once filled).
    """
    api = _api()
    if api is None or size == 0:
        buffer = bytearray(size)
        return buffer, memoryview(buffer)
    made = api.bytes_new(None, size)
    return made, api.view(made, sys.getsizeof(made) - size - 1, size)


def new_text(length: int, maxchar: int) -> tuple[str | bytearray, memoryview]:
    """
    Return a new ``str`` of *length* characters of *maxchar*'s width, and a writable
    view of its storage (``length`` times 1, 2 or 4 bytes, the platform's byte order).

    Args:
        length: Characters.
        maxchar: The largest character it will hold, as ``PyUnicode_New`` takes it.

    Returns:
        ``(object, view)``: a ``str`` filled in place where :func:`available`, else
        a ``bytearray`` to decode once filled.
    """
    width = 1 if maxchar < 0x100 else 2 if maxchar < 0x10000 else 4
    api = _api()
    if api is None or length == 0:
        buffer = bytearray(length * width)
        return buffer, memoryview(buffer)
    made = api.text_new(length, maxchar)
    size = length * width
    # a compact str: header, then the characters and a terminating NUL
    return made, api.view(made, sys.getsizeof(made) - size - width, size)
