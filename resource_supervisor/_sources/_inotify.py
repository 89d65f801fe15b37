"""
inotify through libc (``inotify_init1`` / ``inotify_add_watch``), with no dependency.

Covers: :class:`Inotify`, which makes a non-blocking, close-on-exec inotify
descriptor and adds ``IN_MODIFY`` watches to it. Does not cover: what is watched or
what a change means (:mod:`._notify`, which watches cgroup v2 ``memory.events``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

__all__ = ("Inotify",)

_IN_MODIFY: Final = 0x00000002
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC


class Inotify:
    """inotify through libc (``inotify_init1`` / ``inotify_add_watch``), no dependency."""

    def __init__(self, libc_name: str | None) -> None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        self._init1 = libc.inotify_init1
        self._init1.argtypes = [ctypes.c_int]
        self._init1.restype = ctypes.c_int
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add_watch.restype = ctypes.c_int

    def init(self) -> int:
        fd = int(self._init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        return fd

    def watch(self, fd: int, path: str) -> None:
        if self._add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", path)
