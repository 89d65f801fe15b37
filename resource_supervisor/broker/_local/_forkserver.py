"""
A private ``multiprocessing`` forkserver per process lane, so the lane can stop it.

Covers: :class:`LaneForkServerContext`, a forkserver context whose processes are
forked by a server that belongs to one lane (not the interpreter-wide one), and
its :meth:`~LaneForkServerContext.stop`. Does not cover: the worker slots that use
it (:mod:`._slot`), the lane (:mod:`._lane`) or what runs in the workers
(:mod:`._worker`).

Why private: ``fork`` copies a process that runs an event loop and threads (locks
held by other threads stay locked in the child); ``spawn`` starts a fresh
interpreter per worker, which is slower. The interpreter-wide forkserver would
outlive the lane; one server per lane lets :meth:`ProcessLane.aclose` stop it, so
nothing the lane started outlives it. The interpreter-wide ``multiprocessing``
resource tracker, shared by every user of ``multiprocessing`` in the process, is
left running.

How: ``popen_forkserver.Popen`` asks the module-global server; :class:`_LanePopen`
repeats its ``_launch`` (CPython 3.11-3.13) against the server stored on the
process object. The server itself is never pickled to the child.
"""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.process
import multiprocessing.util
import os
import shutil
import tempfile
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("LaneForkServerContext",)


_logger = logging.getLogger("resource_supervisor.broker")

SOCKET_PATH_MAX: Final = 107
"""Bytes a Unix socket path may have on Linux (``sun_path`` is 108, with its NUL)."""

# The server listens on <tempdir>/listener-XXXXXXXX, and multiprocessing makes
# <tempdir> as <base>/pymp-XXXXXXXX: the base may have this many bytes at most.
_BASE_MAX: Final = SOCKET_PATH_MAX - len("/pymp-XXXXXXXX/listener-XXXXXXXX")
_SHORT_BASES: Final = ("/tmp", "/var/tmp", "/dev/shm")


def short_socket_base(base: str) -> str | None:
    """
    Where to make multiprocessing's temporary directory instead of *base* (pure).

    Args:
        base: The temporary directory (``TMPDIR`` or the system default).

    Returns:
        None when the forkserver's socket fits under *base*; otherwise the first
        system temporary directory under which it fits (the caller checks that it
        exists and can be written), or None when none would.
    """
    if len(os.fsencode(base)) <= _BASE_MAX:
        return None
    return next((short for short in _SHORT_BASES if len(short) <= _BASE_MAX), None)


def ensure_socket_fits() -> None:
    """
    Give ``multiprocessing`` a short private temporary directory if ``TMPDIR`` is
    too long for the forkserver's Unix socket.

    A long ``TMPDIR`` (deep CI work directories, per-user directories) would make
    every worker start fail with ``OSError: AF_UNIX path too long``. Like newer
    CPython releases, fall back to the system's temporary directory: a directory
    made there by :func:`tempfile.mkdtemp` (mode 0700, so the socket stays private),
    removed at interpreter exit like the one ``multiprocessing`` would have made.
    Does nothing once ``multiprocessing`` has its directory, or when TMPDIR is short.
    """
    config = getattr(multiprocessing.process.current_process(), "_config", None)
    if not isinstance(config, dict) or config.get("tempdir") is not None:
        return
    short = short_socket_base(tempfile.gettempdir())
    if short is None:
        return
    try:
        directory = tempfile.mkdtemp(prefix="pymp-", dir=short)
    except OSError as exc:
        _logger.debug("no short temporary directory for the forkserver socket: %s", exc)
        return
    multiprocessing.util.Finalize(
        None, functools.partial(shutil.rmtree, directory, ignore_errors=True), exitpriority=-100
    )
    config["tempdir"] = directory
    _logger.debug(
        "TMPDIR is too long for a Unix socket: multiprocessing uses %s instead", directory
    )


class _LaneForkServerProcess(multiprocessing.context.ForkServerProcess):
    """A forkserver process started by its lane's own server."""

    _lane_server: multiprocessing.forkserver.ForkServer | None = None

    @staticmethod
    def _Popen(process_obj: multiprocessing.process.BaseProcess) -> _LanePopen:  # noqa: N802
        return _LanePopen(process_obj)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_lane_server", None)  # the server holds a lock; the child needs nothing of it
        return state


class _LanePopen(multiprocessing.popen_forkserver.Popen):
    """``popen_forkserver.Popen`` asking the process's lane server, not the global one."""

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """
        The worker's exit status, read once from the forkserver (None while alive).

        The executor's manager thread and the lane's reaper both poll the same
        worker. In the standard class, when both see the sentinel readable, the
        first reads the status and the second hits EOF and records 255 over it, so
        a SIGKILL would read as "exited with code 255". Here the read happens once,
        under a lock.
        """
        if self.returncode is None:
            timeout = 0 if flag == os.WNOHANG else None
            if not multiprocessing.connection.wait([self.sentinel], timeout):
                return None
            with self._status_lock:
                if self.returncode is None:
                    try:
                        self.returncode = multiprocessing.forkserver.read_signed(self.sentinel)
                    except (OSError, EOFError):
                        self.returncode = 255  # the forkserver itself is gone
        return self.returncode

    def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
        self._status_lock = threading.Lock()
        from multiprocessing import reduction, spawn, util
        from multiprocessing.context import set_spawning_popen

        server = getattr(process_obj, "_lane_server", None)
        assert isinstance(server, multiprocessing.forkserver.ForkServer)
        prep_data = spawn.get_preparation_data(process_obj._name)  # type: ignore[attr-defined]
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = server.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        parent_w = os.dup(w)
        close_fds = util.close_fds  # type: ignore[attr-defined]
        self.finalizer = util.Finalize(self, close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class LaneForkServerContext(multiprocessing.context.ForkServerContext):
    """
    A forkserver context whose processes come from one private server.

    The server starts with the first process (blocking: create processes from a
    worker thread) and runs until :meth:`stop`.
    """

    def __init__(self, preload: Sequence[str]) -> None:
        """
        Prepare the server; nothing starts here.

        Args:
            preload: Modules the server imports once, so forked workers start warm.
        """
        self.server = multiprocessing.forkserver.ForkServer()
        self.server.set_forkserver_preload(list(preload))

    def Process(self, *args: object, **kwargs: object) -> _LaneForkServerProcess:  # type: ignore[override]  # noqa: N802
        """Return a process forked by this context's server."""
        ensure_socket_fits()  # before the server binds its socket
        process = _LaneForkServerProcess(*args, **kwargs)  # type: ignore[arg-type]
        process._lane_server = self.server
        return process

    def ensure_running(self) -> None:
        """
        Start the server if it is not running (blocking, briefly: it returns once
        the server process is spawned, not once it has imported its preload).
        """
        ensure_socket_fits()
        self.server.ensure_running()

    def stop(self) -> None:
        """Stop the server process and reap it (blocking; call from a thread)."""
        stop = getattr(self.server, "_stop", None)
        if stop is not None:
            stop()
