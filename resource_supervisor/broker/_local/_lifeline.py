"""
A pipe that ties every worker process of a lane to the life of the service.

Covers: :class:`Lifeline` (the service's side: a pipe whose write end only the
service holds) and :func:`watch_lifeline` (the worker's side: a thread that ends
the worker as soon as the pipe reads end of file). Does not cover: passing the
read end to a worker (:func:`._slot.open_slot`), the worker's other start-up
(:func:`._worker.init_worker`), removing the dead service's spill files
(:mod:`._spill`) or forgetting the lane in a forked child (:mod:`._fork_guard`).

Why a pipe: when the service dies, however it dies (SIGKILL from the kernel's OOM
killer, a supervisor's graceful timeout), the kernel closes its descriptors, and
the read end held by each worker reads end of file. That works for every start
method, unlike ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked the
child exits (the lane starts workers from worker threads). Nothing is ever
written to the pipe; no other process may hold its write end: it is not
inheritable, and a child forked from the service, a worker started with ``fork``
included, closes its copy at once (:mod:`._fork_guard`).

On end of file the worker removes the spill files of the dead service and exits
at once with :data:`ORPHAN_EXIT_CODE`, stopping whatever call it was running.
The watching thread needs the GIL for a moment: a call that holds the GIL in
one long C function delays the exit until it lets go.

Only light standard-library modules are imported here: worker processes use it.
"""

from __future__ import annotations

import os
import threading
from typing import Final

from ._spill import remove_owned_spills

__all__ = ("ORPHAN_EXIT_CODE", "Lifeline", "watch_lifeline")

ORPHAN_EXIT_CODE: Final = 70
"""Exit status of a worker that outlived its service."""


class Lifeline:
    """The service's side of the lifeline pipe; nothing is created before :meth:`open`."""

    def __init__(self) -> None:
        """Prepare the lifeline; no descriptor is opened here."""
        self.read_fd = -1
        self.write_fd = -1

    def open(self) -> int:
        """
        Create the pipe if needed (idempotent).

        Returns:
            The read end, to be duplicated into each worker.
        """
        if self.read_fd < 0:
            self.read_fd, self.write_fd = os.pipe()  # not inheritable (PEP 446)
        return self.read_fd

    def close(self) -> None:
        """Close both ends; workers still holding the read end then exit. Idempotent."""
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


def _watch(fd: int, owner: int, spill_dir: str | None) -> None:
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:  # pragma: no cover - retried by Python itself (PEP 475)
            continue
        except OSError:
            break
    try:
        remove_owned_spills(owner, spill_dir)
    finally:
        os._exit(ORPHAN_EXIT_CODE)


def watch_lifeline(fd: int, owner: int, spill_dir: str | None) -> threading.Thread:
    """
    Start the thread that ends this worker when the service dies (worker side).

    Args:
        fd: This worker's copy of the lifeline's read end (owned by the thread).
        owner: The service's pid (names its spill files).
        spill_dir: The directory of the service's spill files (``None``: the default).

    Returns:
        The started daemon thread.
    """
    thread = threading.Thread(
        target=_watch, args=(fd, owner, spill_dir), name="resource-supervisor-lifeline", daemon=True
    )
    thread.start()
    return thread
