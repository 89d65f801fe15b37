"""
Memory notifications against a real cgroup v1 memory controller: usage thresholds
armed through ``cgroup.event_control`` in a child cgroup (created inside this
process's own memory cgroup, removed afterwards), a supervisor with the default 30 s
interval that reacts to a crossing within seconds, a real PSI trigger woken by
memory stall made in a small child cgroup (its page cache thrashing), and a service
that survives a fast ramp with the defaults which kills it without the supervisor.

Needs root and a writable v1 memory controller; skipped with the reason otherwise.
The cgroup helpers are those of ``tests/test_container_limit.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from resource_supervisor import Supervisor, SupervisorSettings
from resource_supervisor._sampler import Sampler
from resource_supervisor._sources._arming import PsiTrigger, threshold_bytes
from resource_supervisor._sources._notify import DEFAULT_PSI_TRIGGER, MemoryNotifier
from tests._leaks import open_fds
from tests._loop_guard import blocking_setup
from tests.test_container_limit import LIMIT_BYTES, memory_cgroup

if TYPE_CHECKING:
    from collections.abc import Iterator

    from resource_supervisor import CleanupRequest
    from resource_supervisor.testing import MemoryCgroup

pytestmark = [pytest.mark.cgroup, pytest.mark.timeout(60)]

__all__ = ("memory_cgroup",)  # the fixture, reused

MiB = 2**20
ALLOCATOR = Path(__file__).parents[1] / "_notify_allocator.py"
CHILD = Path(__file__).parents[1] / "_cgroup_child.py"
LEVELS = (75.0, 85.0)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # freed blocks go back to the kernel at once (see test_container_limit)
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 * MiB)
    env.pop("COVERAGE_PROCESS_START", None)
    return env


class Allocator:
    """The allocator child, moved into a cgroup before it allocates anything."""

    def __init__(self, cgroup: MemoryCgroup) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ALLOCATOR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
            text=True,
        )
        self._await_ok()
        cgroup.add(self.process.pid)

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.process.pid

    def _await_ok(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().startswith("ok ")

    def send(self, command: str) -> None:
        """Send one command and wait until it is done (blocking: call from a thread)."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        self._await_ok()

    async def run(self, command: str) -> None:
        """:meth:`send` in a worker thread, so the loop keeps serving notifications."""
        await anyio.to_thread.run_sync(self.send, command)

    def close(self) -> None:
        """End the child and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def allocator(memory_cgroup: MemoryCgroup) -> Iterator[Allocator]:
    """An allocator child inside the test's 300 MiB cgroup."""
    child = Allocator(memory_cgroup)
    try:
        yield child
    finally:
        child.close()


@blocking_setup("reads the cgroup memory.stat the test checks")
def _inactive(cgroup: MemoryCgroup) -> int:
    for line in (cgroup.path / "memory.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "total_inactive_file":
            return int(value)
    raise AssertionError("no total_inactive_file in memory.stat")


def _close(marks: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Marks equal up to the kernel's granularity (the cache moves a little meanwhile)."""
    return len(marks) == len(expected) and all(
        abs(a - b) <= MiB for a, b in zip(marks, expected, strict=True)
    )


@blocking_setup("writes and removes the cache file it measures")
async def test_real_v1_thresholds_fire_both_ways_and_rearm(
    memory_cgroup: MemoryCgroup, allocator: Allocator, tmp_path: Path
) -> None:
    """
    Marks armed at 75 % and 85 % of the 300 MiB limit (lifted by the cgroup's file
    cache, and re-armed when the cache moves) fire when usage crosses them upwards
    and downwards; a changed limit re-arms them at the new marks, which then fire;
    close() unregisters them (their eventfds closed) and leaves no descriptor.
    """
    notes: list[str] = []
    fired = asyncio.Event()

    def on_notify(source: str) -> None:
        notes.append(source)
        fired.set()

    async def crossing(command: str) -> None:
        fired.clear()
        count = len(notes)
        await allocator.run(command)
        with anyio.fail_after(5):
            while "cgroup_v1_threshold" not in notes[count:]:
                await fired.wait()
                fired.clear()

    before = open_fds()
    notifier = MemoryNotifier(on_notify, levels_percent=LEVELS, pid=allocator.pid)
    notifier.start()
    try:
        assert "cgroup_v1_pressure_level" in notifier.armed()
        notifier.update("cgroup_v1", LIMIT_BYTES)
        assert _close(
            notifier.marks, threshold_bytes(LIMIT_BYTES, LEVELS, _inactive(memory_cgroup))
        )
        assert notifier.metrics()["memory_notify_thresholds_armed"] == 2
        assert "cgroup_v1_threshold" in notifier.armed()
        armed = notifier.marks
        notifier.update("cgroup_v1", LIMIT_BYTES)  # unchanged: kept as they are
        assert notifier.marks == armed
        # file cache in the cgroup lifts the marks by as much (levels are graded on
        # the working set, the kernel compares usage)
        await allocator.run(f"write {16 * MiB} {tmp_path / 'cache.bin'}")
        cache = _inactive(memory_cgroup)
        assert cache >= 8 * MiB
        notifier.update("cgroup_v1", LIMIT_BYTES)
        assert _close(notifier.marks, threshold_bytes(LIMIT_BYTES, LEVELS, cache))
        assert notifier.marks[0] >= armed[0] + 8 * MiB
        (tmp_path / "cache.bin").unlink()  # drops its page cache
        notifier.update("cgroup_v1", LIMIT_BYTES)
        assert _close(notifier.marks, armed)

        await crossing(f"alloc {240 * MiB}")  # past 75 % (225 MiB)
        await crossing("free")  # back below it
        # a new limit (e.g. the container was resized) moves the marks
        notifier.update("cgroup_v1", 200 * MiB)
        assert _close(notifier.marks, threshold_bytes(200 * MiB, LEVELS, _inactive(memory_cgroup)))
        await crossing(f"alloc {160 * MiB}")  # past 75 % of 200 MiB, not of 300 MiB
        notifier.update("host", 2**40)  # the limit no longer comes from the cgroup
        assert notifier.marks == ()
        assert "cgroup_v1_threshold" not in notifier.armed()
    finally:
        notifier.close()
    assert open_fds() == before


async def test_defaults_start_cleanup_within_seconds_of_a_crossing(
    memory_cgroup: MemoryCgroup, allocator: Allocator
) -> None:
    """
    With the default 30 s interval, a jump past the aggressive threshold of the
    child's cgroup starts an aggressive cleanup within 5 s (the next sample by
    polling would be up to 30 s away).
    """
    requests: list[CleanupRequest] = []
    started = asyncio.Event()

    async def handler(request: CleanupRequest) -> None:
        requests.append(request)
        if request.aggressive:
            started.set()

    before = open_fds()
    sampler = Sampler(pid=allocator.pid)
    async with Supervisor(SupervisorSettings(), source=sampler) as sup:
        assert sup.settings.monitoring_interval == 30
        assert sup.metrics.memory_limit_bytes == LIMIT_BYTES
        assert sup.metrics["memory_notify_thresholds_armed"] == 2
        sup.register_cleanup(handler, name="probe")
        await allocator.run(f"alloc {265 * MiB}")  # past 85 % (255 MiB) at once
        with anyio.fail_after(5):
            await started.wait()
        # touching the pages takes a few ms: the warning mark is crossed on the way
        assert [r.level.name for r in requests] in (["CRITICAL"], ["WARNING", "CRITICAL"])
        assert sup.metrics["memory_notified_samples_total"] >= 1
        assert sup.metrics["memory_notifications_total"] >= 1
    assert open_fds() <= before


# -- a real PSI trigger that fires -------------------------------------------------

THRASHER = Path(__file__).parents[1] / "_page_cache_thrasher.py"
THRASH_LIMIT_BYTES = 16 * MiB
THRASH_FILE_BYTES = 64 * MiB
THRASH_THREADS = 4
STALL_BOUND_SECONDS = 15.0
PSI_GRACE_SECONDS = 5.0  # for a supervisor wake after the reference trigger's


def _psi_some_total_us() -> int:
    with open("/proc/pressure/memory", "rb") as file:
        some = file.readline().split()
    return int(some[-1].partition(b"=")[2])


@blocking_setup("writes a file and drops it from the page cache")
def _cold_file(path: Path, size: int) -> None:
    """A file of *size* bytes on disk with none of it in the page cache."""
    with path.open("wb") as file:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            file.write(block)
        file.flush()
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


@blocking_setup("starts the thrasher process")
def _thrasher(
    cgroup: MemoryCgroup, path: Path, stack: contextlib.ExitStack
) -> subprocess.Popen[bytes]:
    """The thrasher child in *cgroup*, waiting for its go; killed and reaped by *stack*."""
    child = subprocess.Popen(
        [sys.executable, str(THRASHER), str(path), str(THRASH_THREADS)],
        stdin=subprocess.PIPE,
        env=_child_env(),
    )
    stack.callback(child.communicate)
    stack.callback(child.kill)
    cgroup.add(child.pid)
    return child


def _arm_first_accepted(fd: int) -> PsiTrigger:
    """Arm on *fd* the first of the default trigger's candidates the kernel accepts."""
    for trigger in DEFAULT_PSI_TRIGGER.candidates():
        try:
            os.write(fd, trigger.line())
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            continue
        return trigger
    raise OSError(errno.EINVAL, "no PSI trigger window accepted")


class _ReferenceTrigger:
    """
    The kernel's own answer: a second trigger, the one the supervisor arms, on the
    same PSI file, polled directly from a thread. The kernel evaluates every trigger
    of a group in the same pass, so when this one fires the supervisor's fires too.

    Why a reference rather than a figure of stall: without CAP_SYS_RESOURCE the
    kernel accepts only windows of whole multiples of 2 s and evaluates such triggers
    in its averaging work, and any read of the pressure file (another process's
    monitor, another test's sampler) folds the new stall into the averages first, so
    that evaluation sees none. Measured here with the thrasher: 8 wakes in 15 s
    alone, 2 with a reader every 100 ms, 1 with one every 10 ms, at 8-9 s of stall
    each time.
    """

    def __init__(self, path: str = "/proc/pressure/memory") -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.trigger = _arm_first_accepted(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self.wakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="psi-reference", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLPRI)
        while not self._stop.is_set():
            for _, mask in poller.poll(100):
                if mask & select.POLLPRI:
                    self.wakes += 1

    @blocking_setup("joins its polling thread, which stops within 100 ms")
    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        os.close(self._fd)


@blocking_setup("lays out its files and runs a thrasher process")
async def test_real_psi_trigger_fires_on_memory_stall_and_a_sample_follows(
    tmp_path: Path,
) -> None:
    """
    A child in a 16 MiB cgroup re-reads a 64 MiB file from four threads, so the page
    cache thrashes and the kernel counts memory stall. The supervisor (defaults: 30 s
    interval; only the PSI trigger on /proc/pressure/memory armed, its sampler
    pointed at a cgroup tree without this process) is woken by that trigger and
    samples long before its next poll; no descriptor is left after exit.

    The oracle is the kernel itself: a reference trigger like the supervisor's, on
    the same file (:class:`_ReferenceTrigger`). Fails where the kernel woke the
    reference and no notified sample followed within a grace period; skipped where
    the cgroup cannot be made, PSI cannot be written, or the kernel woke neither
    within the bound (the stall and the trigger are then in the reason).
    """
    from resource_supervisor.testing import CgroupUnavailableError
    from resource_supervisor.testing import memory_cgroup as sandbox_cgroup

    try:
        os.close(os.open("/proc/pressure/memory", os.O_RDWR | os.O_NONBLOCK))
    except OSError as exc:
        pytest.skip(f"/proc/pressure/memory cannot be opened for writing: {exc}")
    path = tmp_path / "thrash.bin"
    no_cgroup = tmp_path / "no-cgroup"
    no_cgroup.mkdir()
    before = open_fds()
    notified = False
    with contextlib.ExitStack() as stack:
        stack.callback(path.unlink, missing_ok=True)  # 64 MiB: not kept with tmp_path
        _cold_file(path, THRASH_FILE_BYTES)
        try:
            cgroup = stack.enter_context(sandbox_cgroup(THRASH_LIMIT_BYTES, prefix="rs-test-psi"))
        except CgroupUnavailableError as exc:
            pytest.skip(str(exc))
        child = _thrasher(cgroup, path, stack)
        sampler = Sampler(cgroup_root=str(no_cgroup))
        async with (
            Supervisor(SupervisorSettings(), source=sampler) as sup,
            sup.subscribe(policy="latest") as snapshots,
        ):
            armed = sup.metrics
            assert armed["memory_notify_psi_triggers_armed"] == 1, dict(armed)
            assert armed["memory_notify_thresholds_armed"] == 0
            assert armed["memory_notify_pressure_level_armed"] == 0
            assert armed["memory_notify_events_watched"] == 0
            assert armed["memory_notified_samples_total"] == 0
            reference = _ReferenceTrigger()
            stack.callback(reference.close)
            stall_before = _psi_some_total_us()
            start = anyio.current_time()
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()

            async def notified_sample() -> bool:
                async for snapshot in snapshots:
                    if snapshot["memory_notified_samples_total"]:
                        return True
                return False  # pragma: no cover - the stream ends only at exit

            with anyio.move_on_after(STALL_BOUND_SECONDS):
                notified = await notified_sample()
            woken_by_kernel = reference.wakes
            if not notified and woken_by_kernel:
                # The kernel fired (perhaps at the very end): the wake must follow.
                with anyio.move_on_after(PSI_GRACE_SECONDS):
                    notified = await notified_sample()
            elapsed = anyio.current_time() - start
            stall_us = _psi_some_total_us() - stall_before
            after = sup.metrics
    assert open_fds() <= before
    if not notified:
        assert not woken_by_kernel, (
            f"the kernel woke the reference trigger {woken_by_kernel} time(s) and no "
            f"notified sample followed in {elapsed:.1f} s "
            f"(triggers armed {after['memory_notify_psi_triggers_armed']})"
        )
        trigger = reference.trigger
        pytest.skip(
            f"the kernel fired no PSI trigger ({trigger.line()[:-1].decode()!r}) "
            f"in {elapsed:.1f} s "
            f"with {stall_us / 1e3:.0f} ms of memory stall: unprivileged triggers are "
            "starved while other readers of /proc/pressure/memory fold the stall first"
        )
    assert after["memory_notifications_total"] >= 1  # PSI alone is armed: its wakes
    assert after["memory_notified_samples_total"] >= 1
    assert elapsed < SupervisorSettings().monitoring_interval  # not the next poll


# -- survival ------------------------------------------------------------------------

RAMP_STEP_BYTES = 8 * MiB
RAMP_PAUSE_SECONDS = 0.04  # 8 MiB per 40 ms: 200 MiB/s
RAMP_TARGET_BYTES = 1200 * MiB


def _ramp(
    cgroup: MemoryCgroup, mode: str, settings: str | None
) -> tuple[int, list[dict[str, object]]]:
    args = [sys.executable, str(CHILD), mode, str(RAMP_STEP_BYTES), str(RAMP_TARGET_BYTES)]
    if settings is not None:
        args += [settings, str(RAMP_PAUSE_SECONDS)]
    else:
        args += ["{}", str(RAMP_PAUSE_SECONDS)]
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    try:
        cgroup.add(process.pid)
        stdout, _ = process.communicate(b"go\n", timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return process.returncode, lines


@pytest.mark.slow
def test_defaults_survive_a_fast_ramp_that_kills_without_the_supervisor(
    memory_cgroup: MemoryCgroup,
) -> None:
    """
    A cache growing at 200 MiB/s to 1.2 GiB in a 300 MiB cgroup: with the default
    settings (30 s interval) the notified samples clean it up each time it nears the
    limit and the service ends normally with no OOM kill; the same ramp with nothing
    freeing the cache is killed by the OOM killer.
    """
    returncode, lines = _ramp(memory_cgroup, "supervised", "{}")
    assert returncode == 0, lines[-3:]
    assert lines[-1] == {"done": True}
    steps = lines[:-1]
    assert steps[-1]["allocated_bytes"] == RAMP_TARGET_BYTES
    assert {record["memory_limit_bytes"] for record in steps} == {LIMIT_BYTES}
    aggressive = int(str(steps[-1]["aggressive_cleanups"]))
    assert aggressive >= 3  # 1.2 GiB through a 300 MiB limit: several passes
    assert int(str(steps[-1]["notified_samples"])) >= aggressive
    assert memory_cgroup.oom_kills() == 0

    returncode, lines = _ramp(memory_cgroup, "unsupervised", None)
    assert returncode == -signal.SIGKILL
    assert memory_cgroup.oom_kills() >= 1
    assert {"done": True} not in lines
