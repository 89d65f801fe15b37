"""
Refusing a supervisor that a worker process starts while it imports the main module.

Covers: :func:`refuse_in_worker_bootstrap` (the worker's side: called when a
:class:`~resource_supervisor.Supervisor` is created), :func:`check_marker` and
:func:`clear_marker` (the service's side, used by the process lane's launcher), and
:class:`UnguardedMainError`. Does not cover: starting workers
(:mod:`.broker._local._launcher`) or the supervisor itself (:mod:`._supervisor`).

The failure this prevents: with the ``spawn`` and ``forkserver`` start methods a
new worker imports the service's main module (as ``__mp_main__``) before it
serves. A script without an ``if __name__ == "__main__":`` guard then runs again
in every worker (or in the forkserver): each starts its own supervisor and
workers, prints tracebacks and leaks semaphores, and the real cause is buried.

How it fails once instead: while ``multiprocessing`` bootstraps a child
(``current_process()._inheriting``, the flag its own "bootstrapping phase" check
reads), creating a supervisor prints one message naming the fix and exits the
child with :data:`EXIT_STATUS`. The first such child also creates a marker file
named after the service (``O_EXCL``: the first only, so one message however many
workers start); the launcher finds it when a worker fails to start, and from then
on fails every start at once with :class:`UnguardedMainError`, starting no more
workers. The name is a digest of the ``multiprocessing`` authentication key, which
every child receives from the service before it imports the main module (the pid
would not do: a forkserver's workers are the server's children).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import sys
import tempfile
from typing import Final

__all__ = (
    "EXIT_STATUS",
    "MESSAGE",
    "UnguardedMainError",
    "check_marker",
    "clear_marker",
    "marker_path",
    "refuse_in_worker_bootstrap",
)

EXIT_STATUS: Final = 78
"""Exit status of a worker that refused to start a supervisor (``EX_CONFIG``)."""

MESSAGE: Final = (
    "resource-supervisor: a worker process started a Supervisor while importing the "
    'main module {main!r}: the script has no `if __name__ == "__main__":` guard, so '
    "every worker runs it again. Fix: put the code that starts the service under\n\n"
    '    if __name__ == "__main__":\n'
    "        asyncio.run(main())\n"
)
"""What the worker prints (once) and what :class:`UnguardedMainError` says."""

_MARKER_PREFIX: Final = "resource-supervisor-unguarded-main-"


class UnguardedMainError(RuntimeError):
    """
    Raised by the process lane's launcher when its workers re-ran a main module
    that has no ``if __name__ == "__main__":`` guard (no worker is started).
    """

    def __init__(self, main: str) -> None:
        super().__init__(MESSAGE.format(main=main))
        self.main = main

    def __reduce__(self) -> tuple[type[UnguardedMainError], tuple[str]]:
        return type(self), (self.main,)


def marker_path() -> str:
    """
    Return the marker file path of this service (the same in the service and its workers).

    Returns:
        A path in the temporary directory, named by a digest of the
        ``multiprocessing`` authentication key.
    """
    key = bytes(multiprocessing.current_process().authkey)
    digest = hashlib.sha256(b"resource-supervisor-main-guard:" + key).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"{_MARKER_PREFIX}{digest}")


def _main_name() -> str:
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    return str(getattr(main, "__file__", None) or "__main__")


def _bootstrapping() -> bool:
    # multiprocessing sets this while a spawn/forkserver child (or the forkserver
    # preloading __main__) imports the parent's main module
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def refuse_in_worker_bootstrap() -> None:
    """
    Exit this process if it is a worker importing the service's main module.

    Does nothing in the service itself (or anywhere but a bootstrapping child).

    Raises:
        SystemExit: With :data:`EXIT_STATUS`, after printing :data:`MESSAGE` once
            (the first worker of the service prints it, the others exit quietly).
    """
    if not _bootstrapping():
        return
    main = _main_name()
    try:
        fd = os.open(marker_path(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        first = False
    except OSError:  # no temporary directory: still refuse, and say why
        first = True
    else:
        os.close(fd)
        first = True
    if first:
        sys.stderr.write(MESSAGE.format(main=main))
        sys.stderr.flush()
    raise SystemExit(EXIT_STATUS)


def check_marker() -> None:
    """
    Raise if a worker of this service refused to start a supervisor (service side).

    Raises:
        UnguardedMainError: If the marker exists. It stays until
            :func:`clear_marker`, so that workers still starting exit quietly.
    """
    if os.path.exists(marker_path()):
        raise UnguardedMainError(_main_name())


def clear_marker() -> None:
    """Remove this service's marker, if a refusing worker left one (service side)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker_path())
