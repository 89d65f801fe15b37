"""
Names of the temporary files that carry big call arguments, and sweeping stale ones.

Covers: :func:`spill_prefix` (the name every spill file of a service starts with,
carrying the service's pid), :func:`sweep_spills` (remove the spill files of
services that are no longer running) and :func:`remove_owned_spills` (remove the
spill files of one service, as its workers do when it dies). Does not cover:
writing and reading spill files (:mod:`.._pickling`) or noticing the service's
death (:mod:`._lifeline`).

A file is removed only when all of these hold, so nothing else in a shared
temporary directory is ever touched: its name is ``resource-supervisor-call-<pid>-``
followed by what :func:`tempfile.mkstemp` adds; it is a regular file (checked
without following symbolic links); it belongs to this user; and no process with
that pid is running (for :func:`sweep_spills`) or the pid is the given dead
service (for :func:`remove_owned_spills`). Removal goes through a descriptor of
the directory, so a name swapped for a link meanwhile removes only the link.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

__all__ = ("SPILL_PREFIX", "remove_owned_spills", "spill_prefix", "sweep_spills")

SPILL_PREFIX = "resource-supervisor-call-"
"""Start of every spill file's name; the owner's pid and a dash follow."""


def spill_prefix(pid: int | None = None) -> str:
    """
    Return the name prefix of the spill files of service *pid*.

    Args:
        pid: The service's pid; ``None`` for this process.

    Returns:
        ``"resource-supervisor-call-<pid>-"``.
    """
    return f"{SPILL_PREFIX}{os.getpid() if pid is None else pid}-"


def _owner(name: str) -> int | None:
    """The pid in a spill file's name, or ``None`` if the name is not one of ours."""
    if not name.startswith(SPILL_PREFIX):
        return None
    pid, dash, rest = name[len(SPILL_PREFIX) :].partition("-")
    if not dash or not rest or not pid.isdigit():
        return None
    return int(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True


def _remove_matching(directory: str | None, *, dead_owner: int | None) -> int:
    directory = tempfile.gettempdir() if directory is None else directory
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    removed = 0
    uid = os.getuid()
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                owner = _owner(entry.name)
                if owner is None or owner == os.getpid():
                    continue
                if dead_owner is None and _running(owner):
                    continue
                if dead_owner is not None and owner != dead_owner:
                    continue
                with contextlib.suppress(OSError):
                    info = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
                        continue
                    os.unlink(entry.name, dir_fd=dir_fd)
                    removed += 1
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return removed


def sweep_spills(directory: str | None = None) -> int:
    """
    Remove the spill files that services no longer running left behind.

    Args:
        directory: Where to look; ``None`` for :func:`tempfile.gettempdir`.

    Returns:
        How many files were removed (errors are skipped: a sweep never fails).
    """
    return _remove_matching(directory, dead_owner=None)


def remove_owned_spills(owner: int, directory: str | None = None) -> int:
    """
    Remove the spill files of service *owner*, which has died (worker side).

    Args:
        owner: The dead service's pid.
        directory: Where to look; ``None`` for :func:`tempfile.gettempdir`.

    Returns:
        How many files were removed.
    """
    return _remove_matching(directory, dead_owner=owner)
