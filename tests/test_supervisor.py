"""Tests for the Supervisor: lifecycle, sampling, levels, cleanup dispatch, streams."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

from resource_supervisor import (
    CleanupCompleted,
    CleanupRequest,
    CpuWarning,
    LevelChanged,
    NoSupervisorError,
    PressureLevel,
    Supervisor,
    SupervisorClosedError,
)
from resource_supervisor.testing import ManualClock, ScriptedSource
from tests._settings import quiet

from ._leaks import live_children

if TYPE_CHECKING:
    from collections.abc import Callable

    from resource_supervisor import SupervisorEvent


async def measured_memory_percent() -> float:
    """The effective memory percent this machine reports right now."""
    async with Supervisor(quiet()) as sup:
        return sup.metrics.memory_percent


async def test_enter_samples_and_exposes_core_metrics() -> None:
    """Inside `async with`, metrics is never None and carries the contract's keys."""
    async with Supervisor(quiet()) as sup:
        snap = sup.metrics
        for key in (
            "system_memory_percent",
            "memory_percent",
            "memory_limit_bytes",
            "memory_limit_source",
            "process_rss_bytes",
            "last_metrics_update_ts",
            "pressure_level",
            "thread_lane_capacity",
            "stream_dropped_total",
            "cleanup_handler_failures_total",
        ):
            assert key in snap, key
        assert snap.get("active_sessions_rag", -1) == 0
        assert snap.memory_limit_source in {"host", "cgroup_v1", "cgroup_v2"}
        assert 0 < snap.memory_used_bytes <= snap.memory_limit_bytes
        assert snap.memory_limit_bytes <= psutil.virtual_memory().total
        newer = await sup.update_metrics()
        assert newer is sup.metrics
        assert newer.last_metrics_update_ts >= snap.last_metrics_update_ts


async def test_background_sampling_publishes_to_subscribers() -> None:
    """With monitoring on, snapshots arrive on a subscription at the interval."""
    settings = quiet(monitoring_enabled=True, monitoring_interval=0.02)
    async with Supervisor(settings) as sup, sup.subscribe(buffer=8) as stream:
        seen = []
        with anyio.fail_after(10):
            async for snap in stream:
                seen.append(snap.last_metrics_update_ts)
                if len(seen) == 3:
                    break
        assert seen == sorted(seen)
        assert len(set(seen)) == 3


async def test_subscription_ends_when_supervisor_exits() -> None:
    """An `async for` over a subscription ends (no error) when the supervisor exits."""
    received: list[float] = []

    async def reader(sup: Supervisor, ready: anyio.Event) -> None:
        async with sup.subscribe() as stream:
            ready.set()
            received.extend([snap.memory_percent async for snap in stream])

    async with anyio.create_task_group() as tg, Supervisor(quiet()) as sup:
        ready = anyio.Event()
        tg.start_soon(reader, sup, ready)
        await ready.wait()
        await sup.update_metrics()
        # leaving the supervisor ends the reader; the task group then exits
    assert len(received) == 1


async def test_current_finds_innermost_and_raises_outside() -> None:
    """current() is the innermost running supervisor, and a clear error outside."""
    with pytest.raises(NoSupervisorError, match="async with Supervisor"):
        Supervisor.current()
    async with Supervisor(quiet()) as outer:
        assert Supervisor.current() is outer
        async with Supervisor(quiet()) as inner:
            assert Supervisor.current() is inner
        assert Supervisor.current() is outer
    with pytest.raises(NoSupervisorError):
        Supervisor.current()


async def test_current_from_task_that_did_not_inherit_context() -> None:
    """A task started before entry (like an ASGI request task) still finds the supervisor."""
    found: list[Supervisor] = []
    entered, looked = anyio.Event(), anyio.Event()

    async def request_task() -> None:
        await entered.wait()
        found.append(Supervisor.current())
        looked.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request_task)
        async with Supervisor(quiet()) as sup:
            entered.set()
            with anyio.fail_after(10):
                await looked.wait()
    assert found == [sup]


async def test_use_outside_lifecycle_is_an_error() -> None:
    """Sampling or offloading outside `async with` raises; entering twice raises."""
    sup = Supervisor(quiet())
    with pytest.raises(SupervisorClosedError):
        await sup.update_metrics()
    with pytest.raises(SupervisorClosedError):
        _ = sup.metrics
    async with sup:
        pass
    with pytest.raises(SupervisorClosedError):
        await sup.update_metrics()
    with pytest.raises(SupervisorClosedError):
        _ = sup.executors
    with pytest.raises(RuntimeError, match="only once"):
        await sup.__aenter__()
    await sup.aclose()  # idempotent


async def test_levels_follow_thresholds_relative_to_real_memory() -> None:
    """Thresholds set around the real measured memory drive WARNING then CRITICAL."""
    m = await measured_memory_percent()
    warn = quiet(
        warning_threshold_memory=m / 2,
        aggressive_threshold_memory=min(99.0, m + (100 - m) / 2),
        hysteresis=0.0,
    )
    requests: list[CleanupRequest] = []
    done = anyio.Event()

    async def handler(request: CleanupRequest) -> None:
        requests.append(request)
        done.set()

    async with Supervisor(warn) as sup:
        assert sup.level is PressureLevel.WARNING
        assert sup.metrics.pressure_level is PressureLevel.WARNING
    crit = quiet(warning_threshold_memory=m / 4, aggressive_threshold_memory=m / 2, hysteresis=0.0)
    sup = Supervisor(crit)
    sup.register_cleanup(handler, name="probe")
    async with sup:
        with anyio.fail_after(10):
            await done.wait()
        assert sup.level is PressureLevel.CRITICAL
    assert requests[0].aggressive is True
    assert requests[0].level is PressureLevel.CRITICAL
    assert requests[0].resource == "memory"
    assert requests[0].snapshot is not None


async def test_cleanup_dispatch_with_cooldown_and_events() -> None:
    """Entering WARNING cleans once; holding repeats only after the cooldown; CRITICAL is
    aggressive at once; each pass and level change is published as an event."""
    clock = ManualClock()
    source = ScriptedSource()
    calls: list[bool] = []
    events: list[SupervisorEvent] = []
    called = anyio.Event()

    async def handler(request: CleanupRequest) -> None:
        nonlocal called
        calls.append(request.aggressive)
        called.set()
        called = anyio.Event()

    sup = Supervisor(quiet(cleanup_cooldown=10.0), source=source, clock=clock)
    sup.register_cleanup(handler, name="probe")
    async with sup, sup.subscribe_events() as stream:

        async def settle(expected_calls: int) -> None:
            with anyio.fail_after(10):
                while len(calls) < expected_calls:
                    await called.wait()
            await anyio.wait_all_tasks_blocked()

        source.set(memory_percent=80.0)
        await sup.update_metrics()
        await settle(1)
        await sup.update_metrics()  # holds, inside cooldown
        clock.advance(9.0)
        await sup.update_metrics()
        await anyio.wait_all_tasks_blocked()
        assert calls == [False]
        clock.advance(1.0)
        await sup.update_metrics()
        await settle(2)
        source.set(memory_percent=90.0)
        await sup.update_metrics()
        await settle(3)
        assert calls == [False, False, True]
        source.set(memory_percent=10.0)
        await sup.update_metrics()
        assert sup.level is PressureLevel.NORMAL
        with anyio.fail_after(10):
            while sum(isinstance(e, CleanupCompleted) for e in events) < 3:
                events.append(await stream.receive())
        await anyio.wait_all_tasks_blocked()
        while True:
            try:
                events.append(stream.receive_nowait())
            except anyio.WouldBlock:
                break
    changes = [(e.previous, e.level) for e in events if isinstance(e, LevelChanged)]
    assert changes == [
        (PressureLevel.NORMAL, PressureLevel.WARNING),
        (PressureLevel.WARNING, PressureLevel.CRITICAL),
        (PressureLevel.CRITICAL, PressureLevel.NORMAL),
    ]
    completed = [e for e in events if isinstance(e, CleanupCompleted)]
    assert len(completed) == 3
    assert all(e.automatic for e in completed)


async def test_hysteresis_holds_level_inside_band() -> None:
    """Falling just below the threshold (inside the hysteresis band) keeps the level."""
    source = ScriptedSource()
    levels = []
    async with Supervisor(quiet(hysteresis=5.0), source=source) as sup:
        for percent in (76.0, 71.0, 69.0):
            source.set(memory_percent=percent)
            levels.append((await sup.update_metrics()).pressure_level)
    assert levels == [PressureLevel.WARNING, PressureLevel.WARNING, PressureLevel.NORMAL]


async def test_handlers_run_concurrently_and_failures_are_isolated() -> None:
    """Two handlers that wait for each other both finish (concurrent); a raising and a
    hanging handler are reported, never raised, and the supervisor keeps sampling."""
    a_started, b_started = anyio.Event(), anyio.Event()

    async def a(request: CleanupRequest) -> None:
        a_started.set()
        await b_started.wait()

    async def b(request: CleanupRequest) -> None:
        b_started.set()
        await a_started.wait()

    async def boom(request: CleanupRequest) -> None:
        raise RuntimeError("cache is on fire")

    async def hang(request: CleanupRequest) -> None:
        await anyio.sleep_forever()

    sup = Supervisor(quiet())
    sup.register_cleanup(a, name="a")
    sup.register_cleanup(b, name="b")
    sup.register_cleanup(boom, name="boom")
    sup.register_cleanup(hang, name="hang", timeout=0.2)
    async with sup:
        with anyio.fail_after(10):
            report = await sup.request_cleanup(aggressive=True, reason="test")
        outcomes = {o.name: o for o in report.outcomes}
        assert outcomes["a"].status == "ok"
        assert outcomes["b"].status == "ok"
        assert outcomes["boom"].status == "error"
        assert "cache is on fire" in (outcomes["boom"].error or "")
        assert outcomes["hang"].status == "timeout"
        assert {"memory", "sessions"} <= set(outcomes)
        assert report.request.reason == "test"
        assert report.memory_before_bytes > 0
        assert report.memory_after_bytes > 0
        snap = await sup.update_metrics()
        assert snap["cleanup_handler_failures_total"] == 2
        assert snap["cleanup_runs_total"] == 1


async def test_slow_subscriber_drops_are_counted() -> None:
    """A subscriber that never reads loses its oldest snapshots, counted in the snapshot."""
    async with Supervisor(quiet()) as sup, sup.subscribe(buffer=2) as stream:
        for _ in range(5):
            await sup.update_metrics()
        snap = await sup.update_metrics()
        assert int(snap["stream_dropped_total"]) >= 3
        assert stream.dropped >= 3
        kept = [stream.receive_nowait(), stream.receive_nowait()]
        assert kept[-1] is snap


async def test_provider_metrics_are_namespaced_and_failures_counted() -> None:
    """Provider metrics appear as <name>_<key>; a raising provider is skipped and counted."""

    async def rag() -> dict[str, float]:
        return {"docs": 42.0}

    def broken() -> dict[str, float]:
        raise OSError("backend down")

    async with Supervisor(quiet()) as sup:
        sup.register_metrics_provider("rag", rag)
        sup.register_metrics_provider("broken", broken)
        snap = await sup.update_metrics()
        assert snap["rag_docs"] == 42.0
        assert sup.provider_names == ("rag", "broken")
        assert not any(k.startswith("broken_") for k in snap)
        assert int(snap["provider_failures_total"]) >= 1
        sup.unregister_metrics_provider("rag")
        assert "rag_docs" not in await sup.update_metrics()


async def test_cpu_warning_is_an_event_only() -> None:
    """CPU above warning_threshold_cpu emits CpuWarning and runs no cleanup."""
    source = ScriptedSource()
    source.set(system_cpu_percent=95.0, memory_percent=1.0)
    calls: list[CleanupRequest] = []

    async def handler(request: CleanupRequest) -> None:
        calls.append(request)

    sup = Supervisor(quiet(warning_threshold_cpu=80.0), source=source)
    sup.register_cleanup(handler, name="probe")
    async with sup, sup.subscribe_events() as stream:
        await sup.update_metrics()
        event = stream.receive_nowait()
        assert isinstance(event, CpuWarning)
        assert event.cpu_percent == 95.0
        await anyio.wait_all_tasks_blocked()
    assert calls == []
    assert sup.level is PressureLevel.NORMAL


async def test_batch_size_and_sessions_follow_the_snapshot() -> None:
    """The memory advisor shrinks batches at CRITICAL; sessions count in active_sessions_rag."""
    source = ScriptedSource()
    async with Supervisor(quiet(), source=source) as sup:
        source.set(memory_percent=5.0)
        await sup.update_metrics()
        relaxed = sup.memory.optimize_batch_size(base_batch_size=64, min_batch_size=16)
        source.set(memory_percent=95.0)
        await sup.update_metrics()
        assert sup.memory.optimize_batch_size(base_batch_size=64, min_batch_size=16) == 16
        assert relaxed > 16
        async with sup.sessions.session("conversation-1"):
            snap = await sup.update_metrics()
            assert snap.active_sessions_rag == 1


async def test_idle_sessions_expire_after_a_sample_at_normal_pressure() -> None:
    """
    At NORMAL (no cleanup ever runs) a session idle past session_ttl expires at the next
    sample and its on_close runs; a session in use and a fresh one stay.
    """
    source = ScriptedSource()
    clock = ManualClock()
    closed: list[str] = []

    async def on_close(session_id: str) -> None:
        closed.append(session_id)

    settings = quiet(session_ttl=60.0, session_ttl_aggressive=10.0)
    async with Supervisor(settings, source=source, clock=clock) as sup:
        source.set(memory_percent=5.0)
        sup.sessions.open("idle", on_close=on_close)
        async with sup.sessions.session("busy", on_close=on_close):
            clock.advance(45.0)
            sup.sessions.open("fresh", on_close=on_close)
            clock.advance(20.0)  # idle and busy 65 s since use, fresh 20 s
            snap = await sup.update_metrics()
            assert snap.pressure_level is PressureLevel.NORMAL
            with anyio.fail_after(5):
                while not closed:  # noqa: ASYNC110 - on_close runs in the supervisor's group
                    await anyio.sleep(0.001)
            assert closed == ["idle"]
            assert "busy" in sup.sessions
            assert "fresh" in sup.sessions
        snap = await sup.update_metrics()
        assert snap.active_sessions_rag == 2
        assert snap.sessions_evicted_total == 1


async def test_exit_leaves_no_tasks_threads_or_processes() -> None:
    """After exit, no task, lane thread or worker process of the supervisor remains."""
    before_tasks = len(asyncio.all_tasks())
    async with Supervisor(quiet(monitoring_enabled=True, monitoring_interval=0.01)) as sup:
        await sup.executors.run_in_thread(sum, [1, 2])
        assert await sup.executors.run_in_process(abs, -3) == 3
        async with sup.subscribe():
            await sup.update_metrics()
    assert len(asyncio.all_tasks()) == before_tasks
    assert live_children() == []
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith("resource-supervisor")]


async def test_cancelled_enter_cleans_up() -> None:
    """Cancelling the task that is inside the supervisor still closes everything."""
    entered = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def body() -> None:
            async with Supervisor(quiet(monitoring_enabled=True, monitoring_interval=0.01)):
                entered.set()
                await anyio.sleep_forever()

        tg.start_soon(body)
        await entered.wait()
        tg.cancel_scope.cancel()
    assert live_children() == []
    with pytest.raises(NoSupervisorError):
        Supervisor.current()


async def test_active_sessions_count_at_once_without_a_new_sample() -> None:
    """sup.metrics counts a session opened (and closed) since the last sample at once,
    with every sampled metric unchanged; the compat facade's dict agrees."""
    source = ScriptedSource()
    async with Supervisor(quiet(), source=source) as sup:
        sampled = sup.metrics
        assert sampled.active_sessions_rag == 0
        async with sup.sessions.session("brand-new"):
            inside = sup.metrics
            assert inside.active_sessions_rag == 1
            assert inside.last_metrics_update_ts == sampled.last_metrics_update_ts
            assert inside.memory_percent == sampled.memory_percent
            sup.sessions.open("second")
            assert sup.metrics["active_sessions_rag"] == 2
        await sup.sessions.close("brand-new")
        assert sup.metrics.active_sessions_rag == 1
        assert sup.metrics is sup.metrics  # rebuilt only when the count moves


# -- participants cannot take the service down -------------------------------------------


def _read_counters(
    proc: subprocess.Popen[str], want: Callable[[list[int]], bool], stderr: Path
) -> list[int]:
    """Read the rogue service's lines until *want* holds for its counters (10 s guard)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"the service died: rc={proc.wait()}, stderr={stderr.read_text()[-2000:]}"
        fields = line.split()
        if fields and fields[0] == "alive":
            counters = [int(x) for x in fields[1:]]
            if want(counters):
                return counters
    raise AssertionError("counters never reached the expected values")


def test_participants_raising_base_exceptions_never_stop_the_service(tmp_path: Path) -> None:
    """
    In a real service process, providers (sync and async) raising KeyboardInterrupt,
    SystemExit, GeneratorExit and CancelledError, a cleanup handler and a cache
    raising KeyboardInterrupt and a session on_close raising SystemExit are each
    counted on every sample while the service keeps running; a real SIGINT then
    still stops it.
    """
    # The service logs every failure with its traceback (several KiB a second): into
    # a file, since a pipe nobody reads would fill and block the service.
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests._rogue_service"],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        # 8 providers fail per sample: keep reading until several samples went by
        # and every other participant failed at least twice (cleanup repeats)
        first = _read_counters(proc, lambda c: c[0] >= 8 and c[1] >= 1, stderr)
        later = _read_counters(
            proc, lambda c: c[0] >= first[0] + 40 and c[1] >= first[1] + 2, stderr
        )
        assert later[2] >= 1  # the session's on_close, once (the session is gone)
        assert later[3] >= 2  # the cache, on every cleanup
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)  # drains stdout while it stops
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def test_every_builtin_key_lives_in_a_reserved_namespace() -> None:
    """
    Every key of a real snapshot starts with a reserved provider name, so no provider
    can shadow a built-in metric (a provider `cleanup` with `runs_total` is refused).
    """
    from resource_supervisor._provider_output import RESERVED_PROVIDER_NAMES

    async def provider() -> dict[str, float]:
        return {"runs_total": 1e9}

    async with Supervisor(quiet()) as sup:
        with pytest.raises(ValueError, match="built-in"):
            sup.register_metrics_provider("cleanup", provider)
        sup.register_metrics_provider("rag", provider)
        snap = await sup.update_metrics()
        await sup.request_cleanup()
        snap = await sup.update_metrics()
    assert snap["cleanup_runs_total"] == 1
    assert snap["rag_runs_total"] == 1e9
    builtin = [key for key in snap if not key.startswith("rag_")]
    strays = [
        key
        for key in builtin
        if key.split("_", 1)[0] not in RESERVED_PROVIDER_NAMES
        and not re.fullmatch(r"gpu\d+_.*", key)
    ]
    assert strays == []
