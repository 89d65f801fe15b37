"""
Tests of the memory notification source: the pure arming rules, cgroup v2
``memory.events`` through inotify against a directory laid out like a v2 cgroup, a
real PSI trigger on ``/proc/pressure/memory``, every fallback, and no descriptor
left behind. Real cgroup v1 thresholds are in ``tests/sources/test_notify_cgroup.py``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor import Supervisor, SupervisorSettings
from resource_supervisor._sampler import Sampler
from resource_supervisor._sources._arming import (
    PSI_UNPRIVILEGED_WINDOW_US,
    PSI_WINDOW_MAX_US,
    PSI_WINDOW_MIN_US,
    REARM_TOLERANCE_BYTES,
    PsiTrigger,
    next_sample_at,
    parse_memory_events,
    pressure_events,
    threshold_bytes,
    thresholds_to_rearm,
)
from resource_supervisor._sources._notify import DEFAULT_PSI_TRIGGER, MemoryNotifier
from resource_supervisor.testing import ScriptedSource
from tests._leaks import open_fds
from tests._loop_guard import blocking_setup

if TYPE_CHECKING:
    from pathlib import Path

PID = 4242
EVENTS = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
LEVELS = (75.0, 85.0)


# -- pure rules ----------------------------------------------------------------------


@given(
    limit=st.integers(1, 2**50),
    percents=st.lists(st.floats(0, 150, allow_nan=False), max_size=4),
    cache=st.integers(-(2**40), 2**40),
)
def test_marks_lie_strictly_inside_the_limit_ascending(
    limit: int, percents: list[float], cache: int
) -> None:
    """Every mark is a byte count in (0, limit), ascending, without duplicates."""
    marks = threshold_bytes(limit, percents, cache)
    assert list(marks) == sorted(set(marks))
    assert all(0 < mark < limit for mark in marks)
    levels = {math.ceil(limit * percent / 100.0) for percent in percents}
    assert {mark - max(0, cache) for mark in marks} <= levels


def test_marks_sit_at_the_warning_and_aggressive_levels() -> None:
    """A 300 MiB limit at 75 % and 85 % gives marks at those shares, rounded up."""
    limit = 300 * 2**20
    assert threshold_bytes(limit, LEVELS) == (235929600, 267386880)
    assert threshold_bytes(0, LEVELS) == ()
    assert threshold_bytes(limit, (100.0, 0.0)) == ()
    # usage includes file cache: the marks sit above the levels by the cache
    assert threshold_bytes(limit, LEVELS, 2**20) == (235929600 + 2**20, 267386880 + 2**20)
    assert threshold_bytes(limit, LEVELS, 50 * 2**20) == (235929600 + 50 * 2**20,)


def test_rearm_only_when_the_marks_move_beyond_the_tolerance() -> None:
    """
    Nothing armed and nothing wanted: no work; new marks, another count, or a mark
    moved by more than the tolerance: re-arm; smaller moves keep the marks.
    """
    assert not thresholds_to_rearm(None, ())
    assert thresholds_to_rearm(None, (1, 2))
    assert not thresholds_to_rearm((1, 2), (1, 2))
    assert not thresholds_to_rearm((1000, 2000), (1000, 2000 + REARM_TOLERANCE_BYTES))
    assert thresholds_to_rearm((1000, 2000), (1000, 2001 + REARM_TOLERANCE_BYTES))
    assert thresholds_to_rearm((1, 2), (1, 3), tolerance=0)
    assert thresholds_to_rearm((1, 2), ())
    assert thresholds_to_rearm((1, 2), (2,))


def test_psi_line_ends_in_nul_and_falls_back_to_two_second_windows() -> None:
    """
    The line ends in NUL (the kernel overwrites the last byte); a 1 s window has an
    unprivileged twin with a 2 s window and the same share of stall.
    """
    assert DEFAULT_PSI_TRIGGER.line() == b"some 150000 1000000\0"
    first, second = DEFAULT_PSI_TRIGGER.candidates()
    assert first is DEFAULT_PSI_TRIGGER
    assert second == PsiTrigger("some", 300_000, 2_000_000)
    assert PsiTrigger("full", 100_000, 4_000_000).candidates() == (
        PsiTrigger("full", 100_000, 4_000_000),
    )


@given(
    kind=st.sampled_from(["some", "full"]),
    window=st.integers(PSI_WINDOW_MIN_US, PSI_WINDOW_MAX_US),
    share=st.floats(0.001, 1.0),
)
def test_psi_fallback_is_always_a_valid_unprivileged_trigger(
    kind: str, window: int, share: float
) -> None:
    """The last candidate is valid, its window a multiple of 2 s, its share no smaller."""
    stall = max(1, int(window * share))
    trigger = PsiTrigger(kind, stall, window)  # type: ignore[arg-type]
    last = trigger.candidates()[-1]
    assert last.window_us % PSI_UNPRIVILEGED_WINDOW_US == 0
    assert last.stall_us / last.window_us >= stall / window - 1e-9


@pytest.mark.parametrize(
    ("kind", "stall", "window"),
    [("half", 1, 1_000_000), ("some", 0, 1_000_000), ("some", 2, 1), ("some", 9, 8_000_000_000)],
)
def test_invalid_psi_trigger_is_refused(kind: str, stall: int, window: int) -> None:
    """A kind, stall or window the kernel would refuse raises ValueError at once."""
    with pytest.raises(ValueError, match="PSI trigger"):
        PsiTrigger(kind, stall, window)  # type: ignore[arg-type]


def test_memory_events_parse_and_pressure_counters() -> None:
    """Only high, max, oom and oom_kill rising count as pressure; low does not."""
    before = parse_memory_events(EVENTS.encode() + b"garbage line\n")
    assert before["oom_kill"] == 0
    assert "garbage" not in before
    assert pressure_events(before, {**before, "low": 5}) == ()
    assert pressure_events(before, {**before, "max": 1, "oom_kill": 2}) == ("max", "oom_kill")
    assert pressure_events({}, {"high": 1}) == ("high",)


@given(
    last=st.none() | st.floats(0, 1e6), now=st.floats(0, 1e6), gap=st.floats(0, 1), data=st.data()
)
def test_notified_samples_are_rate_limited(
    last: float | None, now: float, gap: float, data: st.DataObject
) -> None:
    """A notified sample never runs before now, nor sooner than the gap after the last."""
    at = next_sample_at(last, now, gap)
    assert at >= now
    if last is not None:
        assert at >= last + gap
        assert at == max(now, last + gap)


# -- layouts -------------------------------------------------------------------------


@blocking_setup("writes a cgroup file of a fixture tree, as the kernel would")
def _kernel_write(path: Path, text: str) -> None:
    path.write_text(text)


@blocking_setup("writes a fixture tree")
def _v2_layout(tmp_path: Path, *, with_events: bool = True) -> tuple[str, str, Path]:
    """A proc root and a cgroup2 root where process PID lives in /svc."""
    proc = tmp_path / "proc"
    (proc / str(PID)).mkdir(parents=True)
    (proc / str(PID) / "cgroup").write_text("0::/svc\n")
    root = tmp_path / "cgroup"
    svc = root / "svc"
    svc.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (svc / "memory.current").write_text(f"{100 * 2**20}\n")
    (svc / "memory.max").write_text(f"{300 * 2**20}\n")
    if with_events:
        (svc / "memory.events").write_text(EVENTS)
        (root / "memory.events").write_text(EVENTS)
    return str(proc), str(root), svc


@blocking_setup("writes a fixture tree")
def _v1_layout(tmp_path: Path) -> tuple[str, str, Path]:
    """A proc root and a v1 memory hierarchy where process PID lives in /svc."""
    proc = tmp_path / "proc"
    (proc / str(PID)).mkdir(parents=True)
    (proc / str(PID) / "cgroup").write_text("4:memory:/svc\n")
    root = tmp_path / "cgroup"
    svc = root / "memory" / "svc"
    svc.mkdir(parents=True)
    (svc / "memory.usage_in_bytes").write_text("1000\n")
    (svc / "memory.limit_in_bytes").write_text(f"{300 * 2**20}\n")
    (svc / "memory.pressure_level").write_text("")
    return str(proc), str(root), svc


class _Notes:
    """Collects notifications and wakes a waiter."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, source: str) -> None:
        self.sources.append(source)
        self.event.set()

    async def wait(self) -> list[str]:
        with anyio.fail_after(5):
            await self.event.wait()
        self.event.clear()
        return self.sources


# -- cgroup v2 memory.events -----------------------------------------------------------


async def test_v2_memory_events_write_wakes_the_loop(tmp_path: Path) -> None:
    """
    A change of memory.events (as the kernel's cgroup_file_notify would make) wakes
    inotify on the loop; a rise of ``high`` is a notification, a rise of ``low``
    alone is not. The cgroup's own file and its ancestor's are both watched.
    """
    proc, root, svc = _v2_layout(tmp_path)
    notes = _Notes()
    notifier = MemoryNotifier(
        notes, levels_percent=LEVELS, proc_root=proc, cgroup_root=root, pid=PID
    )
    notifier.start()
    try:
        assert notifier.armed() == ("cgroup_v2_events",)
        assert notifier.metrics()["memory_notify_events_watched"] == 2
        _kernel_write(svc / "memory.events", EVENTS.replace("low 0", "low 3"))
        _kernel_write(
            svc / "memory.events", EVENTS.replace("low 0", "low 3").replace("high 0", "high 1")
        )
        assert await notes.wait() == ["cgroup_v2_events"]
        await anyio.sleep(0.05)  # a second wake for the same change must not count
        assert notes.sources == ["cgroup_v2_events"]
        _kernel_write(svc.parent / "memory.events", EVENTS.replace("oom_kill 0", "oom_kill 1"))
        assert await notes.wait() == ["cgroup_v2_events"] * 2
        assert notifier.notifications == 2
        # v1 marks never apply to a v2 cgroup
        notifier.update("cgroup_v2", 300 * 2**20)
        assert notifier.marks == ()
    finally:
        notifier.close()
    assert not notifier.started


async def test_v2_without_memory_events_or_inotify_falls_back_to_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No memory.events file, or a libc without inotify: nothing armed, said at debug."""
    caplog.set_level(logging.DEBUG, logger="resource_supervisor.notify")
    proc, root, _ = _v2_layout(tmp_path, with_events=False)
    with_files = MemoryNotifier(
        lambda _: None, levels_percent=LEVELS, proc_root=proc, cgroup_root=root, pid=PID
    )
    with_files.start()
    assert with_files.armed() == ()
    with_files.close()
    assert "no memory.events to watch" in caplog.text

    proc2, root2, _ = _v2_layout(tmp_path / "b")
    no_inotify = MemoryNotifier(
        lambda _: None,
        levels_percent=LEVELS,
        proc_root=proc2,
        cgroup_root=root2,
        pid=PID,
        libc_name="libresource-supervisor-absent.so",
    )
    no_inotify.start()
    assert no_inotify.armed() == ()
    no_inotify.close()
    assert "inotify unavailable" in caplog.text


async def test_v2_events_file_removed_is_skipped(tmp_path: Path) -> None:
    """A watched file that vanished is skipped on the next wake; the others still count."""
    proc, root, svc = _v2_layout(tmp_path)
    notes = _Notes()
    notifier = MemoryNotifier(
        notes, levels_percent=LEVELS, proc_root=proc, cgroup_root=root, pid=PID
    )
    notifier.start()
    try:
        await anyio.Path(svc / "memory.events").unlink()
        _kernel_write(svc.parent / "memory.events", EVENTS.replace("max 0", "max 1"))
        assert await notes.wait() == ["cgroup_v2_events"]
    finally:
        notifier.close()


# -- cgroup v1 fallbacks (a directory laid out like the hierarchy) ---------------------


async def test_v1_without_event_control_arms_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No cgroup.event_control: no marks, no pressure level, polling only (debug log)."""
    caplog.set_level(logging.DEBUG, logger="resource_supervisor.notify")
    proc, root, _ = _v1_layout(tmp_path)
    notifier = MemoryNotifier(
        lambda _: None, levels_percent=LEVELS, proc_root=proc, cgroup_root=root, pid=PID
    )
    notifier.start()
    notifier.update("cgroup_v1", 300 * 2**20)
    assert notifier.armed() == ()
    assert notifier.marks == ()
    notifier.close()
    assert "event_control unavailable" in caplog.text


@blocking_setup("links its event_control to /dev/full")
async def test_v1_refused_registrations_leave_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """
    An event_control that refuses every write (here /dev/full, ENOSPC) leaves the
    pressure level and the marks unarmed; after one refusal the marks are not
    retried on every sample. A missing usage or pressure_level file arms neither.
    """
    caplog.set_level(logging.DEBUG, logger="resource_supervisor.notify")
    proc, root, svc = _v1_layout(tmp_path)
    (svc / "cgroup.event_control").symlink_to("/dev/full")
    before = open_fds()
    notifier = MemoryNotifier(
        lambda _: None, levels_percent=LEVELS, proc_root=proc, cgroup_root=root, pid=PID
    )
    notifier.start()
    notifier.update("cgroup_v1", 300 * 2**20)
    notifier.update("cgroup_v1", 200 * 2**20)
    assert notifier.armed() == ()
    assert "refused" in caplog.text
    notifier.close()
    assert open_fds() == before

    (svc / "memory.usage_in_bytes").unlink()
    (svc / "memory.pressure_level").unlink()
    bare = MemoryNotifier(
        lambda _: None, levels_percent=LEVELS, proc_root=proc, cgroup_root=root, pid=PID
    )
    bare.start()
    bare.update("cgroup_v1", 300 * 2**20)
    assert bare.armed() == ()
    bare.close()
    assert "memory.usage_in_bytes unavailable" in caplog.text
    assert "memory.pressure_level unavailable" in caplog.text


async def test_no_cgroup_and_no_psi_arms_nothing(tmp_path: Path) -> None:
    """Without a cgroup file for the process and without PSI, nothing is armed."""
    notifier = MemoryNotifier(
        lambda _: None,
        levels_percent=LEVELS,
        proc_root=str(tmp_path),
        cgroup_root=str(tmp_path),
        pid=PID,
    )
    notifier.start()
    notifier.start()  # idempotent
    assert notifier.armed() == ()
    assert notifier.metrics() == {
        "memory_notifications_total": 0,
        "memory_notify_thresholds_armed": 0,
        "memory_notify_pressure_level_armed": 0,
        "memory_notify_events_watched": 0,
        "memory_notify_psi_triggers_armed": 0,
    }
    notifier.close()
    notifier.close()  # idempotent


def test_start_needs_a_running_loop(tmp_path: Path) -> None:
    """Outside an event loop start() raises RuntimeError and opens nothing."""
    before = open_fds()
    notifier = MemoryNotifier(
        lambda _: None, levels_percent=LEVELS, proc_root=str(tmp_path), cgroup_root=str(tmp_path)
    )
    with pytest.raises(RuntimeError):
        notifier.start()
    assert open_fds() == before
    notifier.update("cgroup_v1", 1000)  # not started: nothing happens
    assert notifier.marks == ()


# -- PSI -----------------------------------------------------------------------------


@blocking_setup("writes a fixture tree")
def _psi_root(tmp_path: Path, target: str | None) -> str:
    proc = tmp_path / "proc"
    (proc / "pressure").mkdir(parents=True)
    if target is not None:
        (proc / "pressure" / "memory").symlink_to(target)
    return str(proc)


async def test_real_psi_trigger_on_proc_pressure_memory(tmp_path: Path) -> None:
    """
    A real trigger is armed on /proc/pressure/memory (with the 2 s window where the
    opener lacks CAP_SYS_RESOURCE) and its descriptor waited on through an epoll
    descriptor on the loop; close() releases both.
    """
    try:
        fd = os.open("/proc/pressure/memory", os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        pytest.skip(f"/proc/pressure/memory cannot be opened for writing: {exc}")
    os.close(fd)
    before = open_fds()
    notifier = MemoryNotifier(
        lambda _: None, levels_percent=LEVELS, proc_root="/proc", cgroup_root=str(tmp_path)
    )
    notifier.start()
    try:
        if notifier.psi_trigger is None:
            pytest.skip("the kernel refused every PSI trigger here")
        assert notifier.armed() == ("psi",)
        assert notifier.psi_trigger in DEFAULT_PSI_TRIGGER.candidates()
        assert len(open_fds() - before) == 2  # the trigger and the epoll descriptor
    finally:
        notifier.close()
    assert open_fds() == before


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (None, "unavailable"),
        ("/dev/full", "refused"),
        ("/proc/self/oom_score_adj", "invalid window"),
        ("regular", "cannot be polled"),
    ],
)
async def test_psi_fallbacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, target: str | None, reason: str
) -> None:
    """
    A missing PSI file, a write refused (ENOSPC), every window refused (EINVAL) and
    a file that cannot be polled each leave PSI unarmed, logged at debug, no fd kept.
    """
    caplog.set_level(logging.DEBUG, logger="resource_supervisor.notify")
    if target == "regular":
        regular = tmp_path / "regular"
        await anyio.Path(regular).write_text("")
        target = str(regular)
    before = open_fds()
    notifier = MemoryNotifier(
        lambda _: None,
        levels_percent=LEVELS,
        proc_root=_psi_root(tmp_path, target),
        cgroup_root=str(tmp_path),
    )
    notifier.start()
    assert notifier.armed() == ()
    assert reason in caplog.text
    notifier.close()
    assert open_fds() == before


@blocking_setup("checks a device file")
def _has_ptmx() -> bool:
    return os.path.exists("/dev/ptmx")


@blocking_setup("reads the links of /proc/self/fd")
def _pty_masters(fds: set[int]) -> list[int]:
    """Those of *fds* that are pseudo-terminal masters (opened through /dev/ptmx)."""
    masters = []
    for fd in fds:
        try:
            if "ptmx" in os.readlink(f"/proc/self/fd/{fd}"):
                masters.append(fd)
        except OSError:
            continue  # closed meanwhile (e.g. the listing's own descriptor)
    return masters


def _hang_up_pty_master(fd: int) -> None:
    """Open the other side of the pseudo-terminal master *fd* and close it again."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptsname.restype = ctypes.c_char_p
    assert libc.unlockpt(fd) == 0, os.strerror(ctypes.get_errno())
    name = libc.ptsname(fd)
    assert name is not None
    os.close(os.open(name, os.O_RDWR | os.O_NOCTTY))


async def test_psi_file_that_hangs_up_is_disarmed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """
    A trigger file that fails (EPOLLHUP or EPOLLERR, as a v2 cgroup's memory.pressure
    does once the cgroup is removed) would read as ready forever: on its first wake it
    is disarmed, its reader removed and its descriptors closed, without counting a
    notification; polling carries on. A pseudo-terminal master stands in for the
    file: it takes the trigger line, polls, and hangs up when its other side closes.
    """
    if not _has_ptmx():
        pytest.skip("no /dev/ptmx to stand in for a failing PSI file")
    caplog.set_level(logging.DEBUG, logger="resource_supervisor.notify")
    notes = _Notes()
    before = open_fds()
    notifier = MemoryNotifier(
        notes,
        levels_percent=LEVELS,
        proc_root=_psi_root(tmp_path, "/dev/ptmx"),
        cgroup_root=str(tmp_path),
    )
    notifier.start()
    try:
        assert notifier.armed() == ("psi",)
        (master,) = _pty_masters(open_fds())  # the trigger file: no other pty is open
        await anyio.sleep(0.05)
        assert notifier.armed() == ("psi",)  # idle: no wake, nothing disarmed
        _hang_up_pty_master(master)
        for _ in range(500):
            if notifier.psi_trigger is None:
                break
            await anyio.sleep(0.01)
        assert notifier.armed() == ()
        assert "PSI trigger file failed" in caplog.text
        assert notes.sources == []
        assert notifier.metrics()["memory_notify_psi_triggers_armed"] == 0
        assert open_fds() == before  # closed at once, not only by close()
    finally:
        notifier.close()
    assert open_fds() == before


# -- the supervisor ------------------------------------------------------------------


async def test_supervisor_shows_armed_sources_and_leaves_no_fd() -> None:
    """
    With defaults the snapshot carries the memory_notify_* keys and the count of
    notified samples; after exit no descriptor of the notifier is left.
    """
    before = open_fds()
    async with Supervisor(SupervisorSettings()) as sup:
        snap = sup.metrics
        assert snap["memory_notifications_total"] == 0
        assert snap["memory_notified_samples_total"] == 0
        for key in (
            "memory_notify_thresholds_armed",
            "memory_notify_pressure_level_armed",
            "memory_notify_events_watched",
            "memory_notify_psi_triggers_armed",
        ):
            assert key in snap
    await anyio.lowlevel.checkpoint()
    assert open_fds() <= before


async def test_notifications_off_or_scripted_source_keep_polling_only() -> None:
    """memory_notifications=false, or a source that is not the built-in sampler: no keys."""
    async with Supervisor(SupervisorSettings(memory_notifications=False)) as sup:
        assert "memory_notifications_total" not in sup.metrics
    async with Supervisor(source=ScriptedSource()) as sup:
        assert "memory_notifications_total" not in sup.metrics
    off = SupervisorSettings(monitoring_enabled=False)
    async with Supervisor(off) as sup:
        assert "memory_notifications_total" not in sup.metrics


async def test_notification_wakes_the_sampling_loop(tmp_path: Path) -> None:
    """
    With the 30 s default interval, a notification (memory.events of a v2 layout
    rising, as the kernel would make it) makes the loop sample within seconds; the
    samples it causes are counted in memory_notified_samples_total.
    """
    proc, root, svc = _v2_layout(tmp_path)
    sampler = Sampler(proc_root=proc, cgroup_root=root, pid=PID)
    async with Supervisor(SupervisorSettings(), source=sampler) as sup:
        assert sup.metrics["memory_notify_events_watched"] == 2
        snap = sup.metrics
        with anyio.fail_after(5), sup.subscribe(policy="latest") as stream:
            for count in range(1, 4):
                _kernel_write(svc / "memory.events", EVENTS.replace("max 0", f"max {count}"))
                async for snap in stream:
                    if snap["memory_notified_samples_total"] >= count:
                        break
        assert snap["memory_notifications_total"] == 3
        assert snap["memory_limit_bytes"] == 300 * 2**20


class _NoReaderLoop(asyncio.SelectorEventLoop):
    """An event loop without add_reader, like the Proactor loop on Windows."""

    def add_reader(self, *args: object) -> None:
        raise NotImplementedError


def test_loop_without_add_reader_keeps_polling(tmp_path: Path) -> None:
    """Where the loop cannot wait on descriptors, the supervisor polls; nothing leaks."""
    proc, root, _ = _v2_layout(tmp_path)

    async def main() -> dict[str, object]:
        sampler = Sampler(proc_root=proc, cgroup_root=root, pid=PID)
        async with Supervisor(SupervisorSettings(), source=sampler) as sup:
            return dict(sup.metrics)

    before = open_fds()
    with asyncio.Runner(loop_factory=_NoReaderLoop) as runner:
        metrics = runner.run(main())
    assert "memory_notifications_total" not in metrics
    assert open_fds() <= before


async def test_prometheus_exports_the_notification_figures(tmp_path: Path) -> None:
    """The armed mechanisms and the notification counters reach the Prometheus export."""
    from prometheus_client import CollectorRegistry, generate_latest

    from resource_supervisor.integrations.prometheus import register

    proc, root, svc = _v2_layout(tmp_path)
    sampler = Sampler(proc_root=proc, cgroup_root=root, pid=PID)
    async with Supervisor(SupervisorSettings(), source=sampler) as sup:
        with anyio.fail_after(5), sup.subscribe(policy="latest") as stream:
            _kernel_write(svc / "memory.events", EVENTS.replace("oom 0", "oom 1"))
            async for snap in stream:
                if snap["memory_notified_samples_total"] >= 1:
                    break
        registry = CollectorRegistry()
        register(sup, registry=registry)
        text = generate_latest(registry).decode()
    assert "resource_supervisor_memory_notifications_total 1.0" in text
    assert "resource_supervisor_memory_notified_samples_total 1.0" in text
    assert "resource_supervisor_memory_notify_events_watched 2.0" in text
    assert "resource_supervisor_memory_notify_thresholds_armed 0.0" in text


async def test_a_storm_of_notifications_causes_at_most_one_sample_per_10_ms(
    tmp_path: Path,
) -> None:
    """
    Hundreds of notifications in a burst cause at most one extra sample per 10 ms
    of elapsed time (plus the one in flight), never one sample each.
    """
    proc, root, svc = _v2_layout(tmp_path)
    sampler = Sampler(proc_root=proc, cgroup_root=root, pid=PID)
    async with Supervisor(SupervisorSettings(), source=sampler) as sup:
        started = anyio.current_time()
        with anyio.fail_after(5), sup.subscribe(policy="latest") as stream:
            for count in range(1, 201):
                _kernel_write(svc / "memory.events", EVENTS.replace("high 0", f"high {count}"))
                await anyio.lowlevel.checkpoint()
            async for snap in stream:
                if snap["memory_notified_samples_total"] >= 1:
                    break
        await anyio.sleep(0.05)  # let the last requested sample run
        elapsed = anyio.current_time() - started
        samples = sup.metrics["memory_notified_samples_total"]
        notifications = sup.metrics["memory_notifications_total"]
    assert 1 <= samples <= elapsed / 0.01 + 2
    assert samples <= notifications
