"""
The loop guard: every async test of the suite runs with blockbuster active, so a
blocking call made on the event loop's thread (a file read, ``time.sleep``, a
contended ``threading.Lock``, a blocking socket) fails the test.

blockbuster raises :class:`~blockbuster.BlockingError` at the call. Code under test
may catch that error (a provider call, a cleanup handler, a poller that keeps its
last reading), so the guard also records every error it raises, with the stack of
the blocking call, and :func:`tests.conftest._loop_never_blocks` fails a test that
otherwise passed when one was raised. A test that must block on the loop on purpose
says so narrowly with :meth:`LoopGuard.allow` (one call, within one function, with
a reason), or asks for the error with :meth:`LoopGuard.expect_blocking`.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import sysconfig
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.resource_tracker import ResourceTracker
from typing import TYPE_CHECKING, TypeVar, cast

import blockbuster.blockbuster as _blockbuster_module
from blockbuster import BlockBuster, BlockingError

from resource_supervisor._admission._cpu_stat import CpuStatReader
from resource_supervisor._cgroup_sandbox import MemoryCgroup, memory_cgroup
from resource_supervisor._container import Container
from resource_supervisor._sampler import Sampler
from resource_supervisor._sources._cpus import usable_cpu_count
from resource_supervisor._sources._notify import MemoryNotifier
from resource_supervisor._sources._read_thread import ReadThread
from resource_supervisor.broker._local._recycling import rss_bytes
from resource_supervisor.broker._local._shared_progress import shared_progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

__all__ = ("Blocked", "LoopGuard", "blocking_setup", "guarded")


@dataclass(frozen=True)
class Blocked:
    """One blocking call the guard refused: its blockbuster name and where it was made."""

    call: str
    stack: traceback.StackSummary
    expected: bool

    def describe(self) -> str:
        """The call and the stack that made it, innermost frame last."""
        frames = [f for f in self.stack if "/blockbuster/" not in f.filename]
        return f"blocking call to {self.call} on the event loop, made at:\n" + "".join(
            traceback.format_list(frames[-12:])
        )


@dataclass
class LoopGuard:
    """The guard of one async test: what it refused, and the allowances made."""

    buster: BlockBuster
    blocked: list[Blocked] = field(default_factory=list)
    allowances: list[str] = field(default_factory=list)
    _expecting: int = 0

    def allow(self, call: str, within: Callable[..., object], reason: str) -> None:
        """
        Let *call* (a blockbuster name such as ``"os.stat"`` or
        ``"io.TextIOWrapper.write"``) block on the loop while *within* (a function) is
        on the stack, for the rest of this test. *reason* says why, in one line.
        """
        if not reason.strip():
            msg = "an allowance needs its reason"
            raise ValueError(msg)
        code = getattr(inspect.unwrap(within), "__code__", None)
        if code is None:
            msg = f"{within!r} is not a Python function"
            raise TypeError(msg)
        self.buster.functions[call].can_block_in(code.co_filename, code.co_name)
        self.allowances.append(f"{call} in {code.co_name}: {reason}")

    @contextmanager
    def expect_blocking(self) -> Iterator[None]:
        """Blocking calls refused inside this block are the test's subject, not a failure."""
        self._expecting += 1
        try:
            yield
        finally:
            self._expecting -= 1

    def record(self, call: str) -> None:
        """Keep one refused call (called as the guard raises its error)."""
        stack = traceback.StackSummary.from_list(
            traceback.extract_stack()[:-2]
        )  # without record and the error's __init__
        self.blocked.append(Blocked(call, stack, expected=self._expecting > 0))

    def unexpected(self) -> list[Blocked]:
        """The refused calls that were not asked for."""
        return [b for b in self.blocked if not b.expected]


# Blocking that the harness does, not the code under test: allowed in every test.
_Allowance = tuple[str, "Callable[..., object]", str]
_LOGGING: tuple[_Allowance, ...] = tuple(
    (
        call,
        logging.StreamHandler.emit,
        "pytest's log-file handler writes (and flushes) every record to os.devnull;"
        " where records go is the application's logging configuration",
    )
    for call in ("io.TextIOWrapper.write", "io.BufferedWriter.write")
)
_RESOURCE_TRACKER: tuple[_Allowance, ...] = tuple(
    (
        "os.write",
        function,
        "multiprocessing tells its resource tracker (a pipe write) when a semaphore is"
        " collected, which may happen in any frame",
    )
    for function in (
        ResourceTracker.ensure_running,
        getattr(ResourceTracker, "_send"),  # noqa: B009 - private, untyped
    )
)
_HARNESS_ALLOWANCES = _LOGGING + _RESOURCE_TRACKER

_current: list[LoopGuard] = []


class _RecordedBlockingError(BlockingError):
    """The error blockbuster raises while a guard is on: it tells the guard first."""

    def __init__(self, func: str) -> None:
        super().__init__(func)
        if _current:
            _current[-1].record(func)


def blocking_setup(reason: str) -> Callable[[F], F]:
    """
    Mark a test function or helper whose own blocking calls may run on the loop (a
    fixture tree written, a child process started, /proc read through psutil), for
    the reason given in one line. Only calls it makes itself, directly or through the
    standard library or psutil, are allowed: the code under test that it calls is
    guarded as everywhere else.
    """
    if not reason.strip():
        msg = "an allowance needs its reason"
        raise ValueError(msg)

    def mark(function: F) -> F:
        code = function.__code__
        _OWN_BLOCKING[code.co_filename, code.co_name] = reason
        return function

    return mark


_SANDBOX: tuple[tuple[None, Callable[..., object], str], ...] = tuple(
    (
        None,
        function,
        "the cgroup sandbox (sync, for tests and benchmarks) makes, reads and removes"
        " its cgroup where it is used",
    )
    for function in (
        memory_cgroup,
        *(
            cast("Callable[..., object]", f)
            for f in vars(MemoryCgroup).values()
            if inspect.isfunction(f)
        ),
    )
)

# Blocking on the loop that the library does and that is known, each one allowed by
# name (the call, in the function that makes it) with what blocks and where, only until
# it moves off the loop; then its entry goes and the guard checks that path again.
_KNOWN: tuple[tuple[tuple[str, ...] | None, Callable[..., object], str], ...] = (
    (
        None,
        Sampler.open,
        "the sampler opens its sources and reads baselines on the loop",
    ),
    (("os.statvfs",), shared_progress, "multiprocessing's heap picks its directory"),
    (
        ("threading.Lock.acquire",),
        ReadThread.stop,
        "the read thread is joined on the loop",
    ),
    (None, usable_cpu_count, "the supervisor reads its CPU quota on the loop"),
    (None, MemoryNotifier.start, "the sample timer arms notifications on the loop"),
    (None, Container.open, "the supervisor joins the peer directory on the loop"),
    (None, Container.close, "the supervisor leaves the peer directory on the loop"),
    (None, MemoryNotifier.update, "the sample timer re-arms thresholds on the loop"),
    (None, CpuStatReader.open, "the admission limiter opens cpu.stat on the loop"),
    (None, Container.observe, "the supervisor lists its peers on the loop"),
    (
        None,
        MemoryNotifier._events_ready,
        "a memory.events change is read in the loop's reader callback",
    ),
    *_SANDBOX,
    (None, rss_bytes, "the process lane reads its workers' RSS on the loop at each sample"),
    (None, Container.peers, "Supervisor.peers() lists the peer directory"),
    (None, Container.publish, "the supervisor publishes to its peers on the loop"),
)

# The same, for a call only one test makes, allowed in that test alone.
_KNOWN_IN_TESTS: tuple[tuple[str, tuple[str, str], str], ...] = (
    (
        "os.stat",
        ("sources/test_read_thread.py", "test_a_forked_child_samples_without_the_read_thread"),
        "without its read thread (a forked child) the sampler reads on the loop",
    ),
)

F = TypeVar("F", bound="Callable[..., object]")

# (file, function) -> reason: functions whose own blocking calls are allowed, marked
# with blocking_setup, or named here for test modules whose owners mark them later.
_OWN_BLOCKING: dict[tuple[str, str], str] = {}
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for _file, _function, _reason in (
    ("test_sampler.py", "tree", "copies its fixture tree"),
    ("test_sampler.py", "fd_count", "lists /proc/self/fd to check for leaks"),
    (
        "test_sampler.py",
        "test_real_sample_has_core_keys_and_agrees_with_psutil",
        "joins its reading thread on the loop",
    ),
    (
        "test_sampler.py",
        "test_hanging_sync_provider_times_out_without_piling_up_threads",
        "waits on a threading.Event on the loop",
    ),
    ("broker/local/test_processes.py", "<lambda>", "polls a file's existence"),
    ("broker/local/test_process_orphans.py", "_dead_pid", "runs a child process"),
    ("broker/local/test_stopping.py", "_slot_with", "allocates shared memory"),
    (
        "broker/local/test_stopping.py",
        "test_a_running_call_is_killed_and_the_rest_of_its_batch_flagged",
        "starts a child process",
    ),
    ("admission/test_admission_cpu_stat.py", "_lay_out", "writes a cgroup tree"),
    ("broker/local/test_process_spawning.py", "_fake_roots", "writes fixture trees"),
    ("_workers.py", "rss_self", "reads the test process's RSS"),
    ("_dask_workers.py", "count", "counts the files Dask tasks wrote"),
    ("admission/test_admission_limiter.py", "_write", "writes a cgroup file"),
    ("_fault_workers.py", "running", "reads the files fault workers wrote"),
    ("_fault_workers.py", "_lines", "reads the files fault workers wrote"),
    *(
        (f"broker/local/{file}", function, "reads or writes its own files inline")
        for file, function in (
            ("test_process_cancellation.py", "<lambda>"),
            ("test_process_misuse.py", "test_a_forgotten_lane_refuses_calls_and_its_workers_exit"),
            (
                "test_process_misuse.py",
                "test_call_from_a_second_event_loop_is_refused_before_it_runs",
            ),
            ("test_process_oom.py", "<lambda>"),
            ("test_process_oom.py", "test_workers_raise_their_oom_score_adj"),
            ("test_processes.py", "test_sigkill_from_outside"),
            ("test_processes.py", "test_cancelled_queued_call_never_runs"),
            ("test_processes.py", "test_cancelled_running_call_kills_its_worker"),
            ("test_processes.py", "test_critical_shrinks_refuses_and_recovers"),
            ("test_processes.py", "_crash_among_innocents"),
            ("test_forkserver_socket.py", "_forkserver_socket"),
            ("test_mp_internals.py", "test_forced_fallback_lane_still_works_and_says_so"),
            ("test_forkserver_socket.py", "test_forkserver_socket_is_private_to_the_services_user"),
            (
                "test_process_cancellation.py",
                "test_cancel_of_the_running_call_kills_it_and_requeues_the_rest_of_its_batch",
            ),
            (
                "test_process_cancellation.py",
                "test_cancel_seen_after_its_call_finished_spares_the_next_call_of_the_batch",
            ),
            ("test_process_misuse.py", "gone"),
            ("test_process_payloads.py", "_spill_files"),
            (
                "test_process_payloads.py",
                "test_a_worker_killed_mid_frame_fails_only_its_running_call",
            ),
            ("test_process_payloads.py", "test_cancelling_the_call_whose_big_frame_is_being_read"),
            ("test_processes.py", "_gone"),
            ("test_process_cancellation.py", "_block_loop_until"),
        )
    ),
    ("test_sampler.py", "test_v2_fixture_sample", "reads a fixture file inline"),
    (
        "test_sampler.py",
        "test_broken_cgroup_files_fall_back_to_host",
        "breaks its fixture files inline",
    ),
    ("test_sampler.py", "rewrite", "rewrites a fixture file"),
    ("test_sampler.py", "meminfo_bytes", "reads a fixture file"),
    (
        "test_sampler.py",
        "test_psi_keys_absent_without_psi",
        "copies its fixture tree inline",
    ),
    (
        "broker/local/test_process_orphans.py",
        "test_a_new_lane_sweeps_spill_files_a_dead_service_left",
        "writes the spill files of a dead service",
    ),
):
    _OWN_BLOCKING[os.path.join(_TESTS_DIR, _file), _function] = _reason

# Dependencies whose own code blocks on the loop, beyond what the library controls.
_DEPENDENCIES: dict[str, str] = {
    "distributed": "Dask builds its scheduler and workers on the loop (psutil, temp"
    " directories, package versions)",
    "fastapi": "FastAPI inspects each endpoint's source file as it first serves it",
    "opentelemetry": "the OpenTelemetry SDK waits for its resource detectors' threads",
    "pytest_timeout": "pytest-timeout dumps the stacks of a test that ran out of time",
}
_STDLIB = sysconfig.get_paths()["stdlib"]
_SITE = sysconfig.get_paths()["purelib"]
_LIBRARY = os.path.join(os.path.dirname(_TESTS_DIR), "resource_supervisor") + os.sep
_INNER = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"})  # their function's


def _made_by_an_allowed_owner() -> bool:
    """
    Whether the blocking call being checked is allowed by who made it: walking out from
    the call past the standard library and third-party helpers (psutil, starlette), the
    first frame that decides is a dependency of :data:`_DEPENDENCIES` (allowed), the
    library (refused), or a test's function, allowed if marked with blocking_setup.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        if name == __file__ or name.startswith(("<", _STDLIB)) or code.co_name in _INNER:
            frame = frame.f_back
            continue
        if name.startswith(_SITE):
            top = name[len(_SITE) :].lstrip("/").split("/", 1)[0]
            if top.removesuffix(".py") in _DEPENDENCIES:  # a package, or one module
                return True
            frame = frame.f_back
            continue
        if name.startswith(_LIBRARY):
            return False
        return (name, code.co_name) in _OWN_BLOCKING
    return False


def _or_an_allowed_owner(predicate: Callable[..., bool]) -> Callable[..., bool]:
    def allowed(*args: object, **kwargs: object) -> bool:
        return predicate(*args, **kwargs) or _made_by_an_allowed_owner()

    return allowed


@contextmanager
def guarded() -> Iterator[LoopGuard]:
    """Run the block with blockbuster on, every error it raises recorded on the guard."""
    buster = BlockBuster()
    for function in buster.functions.values():
        function.can_block_predicate = _or_an_allowed_owner(function.can_block_predicate)
    guard = LoopGuard(buster)
    for call, within, reason in _HARNESS_ALLOWANCES:
        guard.allow(call, within, reason)
    for function in buster.functions.values():  # a module's first import runs its top level
        function.can_block_in("<frozen importlib._bootstrap>", "_find_and_load")
    for calls, within, reason in _KNOWN:
        for call in calls or buster.functions:
            guard.allow(call, within, reason)
    for call, (file, test), reason in _KNOWN_IN_TESTS:
        buster.functions[call].can_block_in(os.path.join(_TESTS_DIR, file), test)
        guard.allowances.append(f"{call} in {test}: {reason}")
    # blockbuster raises the error by its module-level name: a subclass put there is
    # what every wrapped call raises, and pytest.raises(BlockingError) still matches.
    original = _blockbuster_module.BlockingError
    _blockbuster_module.BlockingError = _RecordedBlockingError  # type: ignore[misc]
    _current.append(guard)
    buster.activate()
    try:
        yield guard
    finally:
        buster.deactivate()
        _current.remove(guard)
        _blockbuster_module.BlockingError = original  # type: ignore[misc]
