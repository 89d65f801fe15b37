"""
The version gate: which ``multiprocessing`` internals the local process lane may use.

Covers: :class:`LaneInternals` and :func:`check_internals` (inspect the running
interpreter's ``multiprocessing`` and ``concurrent.futures`` for the private
pieces the lane was written against), and the two accessors that read private
executor state only where the gate allows it (:func:`worker_process`,
:func:`result_queue_writer`). Does not cover: the lane's forkserver that needs
them (:mod:`._forkserver`), starting slots (:mod:`._launcher`,
:mod:`._slot`) or the lane (:mod:`._lane`).

What the lane relies on (CPython 3.11 to 3.13, checked rather than assumed from
the version number):

- ``popen_forkserver.Popen._launch`` with the body :class:`._forkserver._LanePopen`
  repeats against a per-lane server (the names its code uses are compared), plus
  ``ForkServer._stop``, ``ForkServer.connect_to_new_process`` and
  ``ForkServer.set_forkserver_preload``, ``forkserver.read_signed``,
  ``util.close_fds``: the lane's private forkserver. Without them the lane uses
  the standard library's own forkserver context (shared by the interpreter, so
  it outlives the lane; exit statuses of killed workers may read as 255).
- ``ProcessPoolExecutor._processes``: the worker's process object, for its exit
  code. Without it, ``multiprocessing.active_children()`` (public) finds it.
- ``ProcessPoolExecutor._result_queue._writer``: the parent's copy of the result
  queue's write end, closed so that a worker killed mid-write cannot hang the
  executor's shutdown. Without it the copy stays open (that hang becomes possible
  again for results above ``PIPE_BUF``).
- ``ProcessPoolExecutor.kill_workers()`` (public since 3.14): used where present
  to kill a slot's worker, instead of a signal to its pid.

Anything missing is listed in :attr:`LaneInternals.missing`; the lane logs it once
and counts it in its metrics (``process_lane_fallback_internals``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.process
import multiprocessing.queues
import multiprocessing.util
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Final

__all__ = (
    "LAUNCH_NAMES",
    "LaneInternals",
    "check_internals",
    "result_queue_writer",
    "worker_process",
)

LAUNCH_NAMES: Final = frozenset(
    {
        "BytesIO", "Finalize", "_fds", "_name", "close_fds", "connect_to_new_process",
        "dump", "dup", "finalizer", "forkserver", "get_preparation_data", "getbuffer",
        "io", "open", "os", "pid", "read_signed", "reduction", "sentinel",
        "set_spawning_popen", "spawn", "util", "write",
    }
)  # fmt: skip
"""Names used by ``popen_forkserver.Popen._launch`` in CPython 3.11 to 3.13."""


@dataclass(frozen=True, slots=True)
class LaneInternals:
    """What :func:`check_internals` found usable in this interpreter."""

    private_forkserver: bool
    """The lane may run its own forkserver (else the standard library's is used)."""
    processes_map: bool
    """``ProcessPoolExecutor._processes`` holds the worker processes by pid."""
    result_writer: bool
    """``ProcessPoolExecutor._result_queue._writer`` can be closed in the parent."""
    kill_workers: bool
    """The public ``ProcessPoolExecutor.kill_workers()`` exists (3.14+)."""
    missing: tuple[str, ...] = ()
    """The internals that differ from what the lane was written for."""

    def describe(self) -> str:
        """``"full"``, or ``"fallback: <what differs>"`` (for the lane's log)."""
        return "full" if not self.missing else "fallback: " + "; ".join(self.missing)


def _code_names(func: object) -> frozenset[str] | None:
    code = getattr(func, "__code__", None)
    names = getattr(code, "co_names", None)
    return frozenset(names) if isinstance(names, tuple) else None


def _forkserver_gaps() -> list[str]:
    gaps: list[str] = []
    launch = _code_names(getattr(multiprocessing.popen_forkserver.Popen, "_launch", None))
    if launch != LAUNCH_NAMES:
        gaps.append("popen_forkserver.Popen._launch differs")
    server = multiprocessing.forkserver.ForkServer
    gaps += [
        f"ForkServer.{name} missing"
        for name in ("_stop", "connect_to_new_process", "set_forkserver_preload")
        if not callable(getattr(server, name, None))
    ]
    if not callable(getattr(multiprocessing.forkserver, "read_signed", None)):
        gaps.append("forkserver.read_signed missing")
    if not callable(getattr(multiprocessing.util, "close_fds", None)):
        gaps.append("util.close_fds missing")
    return gaps


def check_internals() -> LaneInternals:
    """
    Inspect this interpreter's ``multiprocessing`` for the internals the lane uses.

    Cheap (attribute and code-object lookups, no process starts); called once per
    lane, so a changed interpreter (or a test that patches one) is seen.

    Returns:
        What is usable, and what is missing.
    """
    missing = _forkserver_gaps()
    private_forkserver = not missing
    init_names = _code_names(ProcessPoolExecutor.__init__) or frozenset()
    processes_map = "_processes" in init_names
    if not processes_map:
        missing.append("ProcessPoolExecutor._processes missing")
    queue_names = _code_names(multiprocessing.queues.SimpleQueue.__init__) or frozenset()
    result_writer = "_result_queue" in init_names and "_writer" in queue_names
    if not result_writer:
        missing.append("ProcessPoolExecutor._result_queue._writer missing")
    return LaneInternals(
        private_forkserver=private_forkserver,
        processes_map=processes_map,
        result_writer=result_writer,
        kill_workers=callable(getattr(ProcessPoolExecutor, "kill_workers", None)),
        missing=tuple(missing),
    )


def worker_process(
    executor: ProcessPoolExecutor, pid: int, internals: LaneInternals
) -> multiprocessing.process.BaseProcess | None:
    """
    Return the executor's worker process *pid*, or ``None`` if it cannot be found.

    Args:
        executor: A slot's executor, its worker started.
        pid: The worker's pid.
        internals: The gate's verdict: ``_processes`` is read only where allowed,
            else the public ``multiprocessing.active_children()`` is searched.

    Returns:
        The process object (for its exit code and to join it).
    """
    if internals.processes_map:
        processes = getattr(executor, "_processes", None)
        if isinstance(processes, dict):
            process = processes.get(pid)
            return process if isinstance(process, multiprocessing.process.BaseProcess) else None
    return next((p for p in multiprocessing.active_children() if p.pid == pid), None)


def result_queue_writer(
    executor: ProcessPoolExecutor, internals: LaneInternals
) -> multiprocessing.connection.Connection | None:
    """
    Return the parent's copy of the executor's result-queue write end, if reachable.

    The parent never writes to it (the worker does), but while the parent holds
    it, a worker killed in the middle of writing a big result (more than
    ``PIPE_BUF`` bytes, in several writes) leaves the executor's manager thread
    waiting forever for the rest of the message, and the executor's shutdown with
    it. Closed, the manager reads end of file and reports a broken pool. Close it
    only once the executor's one worker has started (nothing pickles the queue
    after that).

    Args:
        executor: A slot's executor.
        internals: The gate's verdict.

    Returns:
        The connection to close, or ``None`` where the internals differ.
    """
    if not internals.result_writer:
        return None
    writer = getattr(getattr(executor, "_result_queue", None), "_writer", None)
    return writer if isinstance(writer, multiprocessing.connection.Connection) else None
