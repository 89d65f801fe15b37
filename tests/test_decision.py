"""
The supervisor's pure decision, tested directly: levels move only with hysteresis,
transitions are reported exactly when the level changes, cleanup never starts in
cooldown while the level holds nor while an automatic pass at least as aggressive
runs, and the same inputs always give the same decision.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._config import build_settings
from resource_supervisor._decision import (
    CpuAlert,
    CpuRecovery,
    PolicyState,
    ReadingRules,
    Readings,
    decide,
    readings_from,
)
from resource_supervisor._policy import Reading, Thresholds, grade
from resource_supervisor._snapshot import PressureLevel
from tests.strategies import make_snapshot

N, W, C = PressureLevel.NORMAL, PressureLevel.WARNING, PressureLevel.CRITICAL
MEM = Thresholds(warning=75.0, critical=85.0, hysteresis=5.0)
GPU = Thresholds(warning=80.0, critical=90.0, hysteresis=5.0)
COOLDOWN = 30.0

values = st.one_of(st.floats(0.0, 120.0), st.just(math.nan))
kinds = st.sampled_from([None, "normal", "aggressive"])
# one step: memory, GPU, CPU percent, seconds since the previous sample, cleanup running
steps = st.lists(
    st.tuples(values, values, values, st.floats(0.0, 60.0), kinds), min_size=1, max_size=20
)


def fresh() -> PolicyState:
    return PolicyState(cooldown=COOLDOWN, cpu_threshold=80.0)


def readings(memory: float, gpu: float, cpu: float, running: object = None) -> Readings:
    return Readings(
        (Reading("memory", memory, MEM), Reading("gpu", gpu, GPU, device="0")),
        cpu_percent=cpu,
        cleanup_running=running,  # type: ignore[arg-type]
    )


def allowed(previous: PressureLevel, new: PressureLevel, value: float, t: Thresholds) -> bool:
    """Whether one resource may move from *previous* to *new* on *value*."""
    if math.isnan(value):
        return new == previous
    if new > previous:
        return value >= t.enter(new)  # entered only at its enter mark
    if new < previous:
        return value < t.leave(previous)  # left only below its leave mark
    return True


@given(steps)
def test_levels_move_only_with_hysteresis(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    """Per resource, a level is entered at its mark and left only below mark - hysteresis."""
    state, now = fresh(), 0.0
    for memory, gpu, cpu, dt, running in sequence:
        now += dt
        decision = decide(state, readings(memory, gpu, cpu, running), now)
        for key, value, t in (("memory", memory, MEM), ("gpu:0", gpu, GPU)):
            before = state.levels.get(key, N)
            after = decision.state.levels[key]
            assert allowed(before, after, value, t), (key, before, after, value)
        assert decision.level == max(decision.state.levels.values())
        state = decision.state


@given(steps)
def test_transitions_are_reported_exactly_when_the_level_changes(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    """One LevelTransition per change of the overall level, none otherwise."""
    state, now = fresh(), 0.0
    for memory, gpu, cpu, dt, running in sequence:
        now += dt
        decision = decide(state, readings(memory, gpu, cpu, running), now)
        changed = decision.level != state.level
        assert (decision.transition is not None) == changed
        if decision.transition is not None:
            assert (decision.transition.previous, decision.transition.level) == (
                state.level,
                decision.level,
            )
            assert decision.events[0] is decision.transition
        cpu_events = [e for e in decision.events if isinstance(e, CpuAlert)]
        assert len(cpu_events) == (0 if math.isnan(cpu) or cpu < 80.0 else 1)
        state = decision.state


@given(steps)
def test_cleanup_never_in_cooldown_nor_while_one_runs(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    """
    A cleanup is decided only when the level rose or the cooldown has passed, never
    while an automatic pass at least as aggressive runs, and never at NORMAL; the
    cooldown restarts exactly when one is decided.
    """
    state, now = fresh(), 0.0
    for memory, gpu, cpu, dt, running in sequence:
        now += dt
        decision = decide(state, readings(memory, gpu, cpu, running), now)
        plan = decision.cleanup
        if plan is None:
            assert decision.state.last_cleanup_at == state.last_cleanup_at
        else:
            assert decision.level != N
            assert plan.aggressive == (decision.level == C)
            rose = decision.level > state.level
            cooled = state.last_cleanup_at is None or now - state.last_cleanup_at >= COOLDOWN
            assert rose or cooled
            assert running is None or (running == "normal" and plan.aggressive)
            assert decision.state.last_cleanup_at == now
            assert decision.cleanup_not_started().last_cleanup_at == state.last_cleanup_at
        state = decision.state


@given(steps)
def test_decide_is_deterministic(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    """The same state, readings and time give equal decisions, every time."""
    state, now = fresh(), 0.0
    for memory, gpu, cpu, dt, running in sequence:
        now += dt
        r = readings(memory, gpu, cpu, running)
        first, second = decide(state, r, now), decide(state, r, now)
        # repr, not ==: a NaN reading is carried into the decision, and NaN != NaN
        assert repr(first) == repr(second)
        state = first.state


@given(steps)
def test_the_next_state_is_what_the_sample_changed(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    """The next state holds this sample's levels, CPU streak and cleanup time; when none
    of them changed it is the previous state itself (frozen, so shared safely)."""
    state, now = fresh(), 0.0
    for memory, gpu, cpu, dt, running in sequence:
        now += dt
        r = readings(memory, gpu, cpu, running)
        decision = decide(state, r, now)
        graded = grade(state.levels, list(r.pressure))
        expected = PolicyState(
            cooldown=COOLDOWN,
            cpu_threshold=80.0,
            levels=graded.levels,
            level=graded.level,
            last_cleanup_at=now if decision.cleanup is not None else state.last_cleanup_at,
            cpu_high=not math.isnan(cpu) and cpu >= 80.0,
        )
        assert decision.state == expected
        if expected == state:
            assert decision.state is state
        state = decision.state


def test_cpu_streak_warns_once_then_recovers() -> None:
    """The first sample of a high-CPU streak is marked for logging; leaving it is a recovery."""
    state = fresh()
    marks = []
    for cpu in (50.0, 90.0, 95.0, 10.0, 10.0):
        decision = decide(state, readings(10.0, 10.0, cpu), 0.0)
        marks.append(decision.cpu)
        state = decision.state
    assert marks[0] is None
    assert isinstance(marks[1], CpuAlert)
    assert marks[1].first
    assert isinstance(marks[2], CpuAlert)
    assert not marks[2].first
    assert isinstance(marks[3], CpuRecovery)
    assert marks[4] is None


def test_a_rise_escalates_over_a_running_normal_pass_but_not_over_an_aggressive_one() -> None:
    """WARNING -> CRITICAL during a running normal pass still decides an aggressive one."""
    warning = decide(fresh(), readings(80.0, 0.0, 0.0), 0.0)
    assert warning.cleanup is not None
    assert not warning.cleanup.aggressive
    critical = decide(warning.state, readings(90.0, 0.0, 0.0, "normal"), 1.0)
    assert critical.cleanup is not None
    assert critical.cleanup.aggressive
    assert critical.cleanup.reason == "memory pressure CRITICAL"
    blocked = decide(warning.state, readings(90.0, 0.0, 0.0, "aggressive"), 1.0)
    assert blocked.cleanup is None
    assert blocked.transition is not None  # the level still changes and is published


def test_readings_from_a_snapshot_follow_the_settings() -> None:
    """Memory always; PSI only with its threshold set; GPU per device; CPU passed on."""
    data = make_snapshot(
        memory_percent=50.0,
        system_cpu_percent=42.0,
        psi_memory_some_avg10=3.0,
        psi_memory_full_avg10=1.0,
    )
    plain = readings_from(data, build_settings())
    assert [r.resource for r in plain.pressure] == ["memory"]
    assert plain.cpu_percent == 42.0
    psi = readings_from(
        data,
        build_settings(psi_warning_some_avg10=10.0, psi_critical_full_avg10=5.0),
        cleanup_running="normal",
    )
    assert [r.resource for r in psi.pressure] == ["memory", "psi", "psi_full"]
    assert psi.cleanup_running == "normal"


@given(
    memory=st.floats(0.0, 120.0),
    some=st.one_of(st.none(), st.floats(0.0, 100.0)),
    full=st.one_of(st.none(), st.floats(0.0, 100.0)),
    gpu=st.one_of(st.none(), st.floats(0.0, 120.0)),
    running=kinds,
)
def test_reading_rules_built_once_read_as_readings_from(
    memory: float, some: float | None, full: float | None, gpu: float | None, running: object
) -> None:
    """Rules built once from the settings give readings_from's readings, sample by sample."""
    settings = build_settings(
        psi_warning_some_avg10=10.0 if some is not None else None,
        psi_critical_full_avg10=5.0 if full is not None else None,
    )
    extra: dict[str, float | int] = {}
    if some is not None:
        extra["psi_memory_some_avg10"] = some
    if full is not None:
        extra["psi_memory_full_avg10"] = full
    if gpu is not None:
        extra.update(gpu_count=1, gpu0_memory_percent=gpu)
    data = make_snapshot(memory_percent=memory, system_cpu_percent=12.5, **extra)
    rules = ReadingRules(settings)
    for _ in range(2):  # the same rules again, on the same sample
        got = rules.readings(data, cleanup_running=running)  # type: ignore[arg-type]
        assert got == readings_from(data, settings, cleanup_running=running)  # type: ignore[arg-type]


async def test_supervisor_starts_no_automatic_cleanup_while_one_still_runs() -> None:
    """
    A real supervisor at WARNING past its cooldown starts no second automatic pass
    while the first still runs; once it has ended, the next sample starts one.
    """
    import anyio

    from resource_supervisor import CleanupCompleted, CleanupRequest, Supervisor
    from resource_supervisor.testing import ManualClock, ScriptedSource
    from tests._settings import quiet

    clock = ManualClock()
    source = ScriptedSource()
    started = anyio.Event()
    release = anyio.Event()
    calls = 0

    async def slow(request: CleanupRequest) -> None:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()

    sup = Supervisor(
        quiet(cleanup_cooldown=10.0, cleanup_handler_timeout=30.0), source=source, clock=clock
    )
    sup.register_cleanup(slow, name="slow")
    async with sup:
        source.set(memory_percent=80.0)
        await sup.update_metrics()
        with anyio.fail_after(10):
            await started.wait()
        clock.advance(11.0)  # past the cooldown, the first pass still running
        await sup.update_metrics()
        await anyio.wait_all_tasks_blocked()
        assert calls == 1
        # no request joined the running pass: none was made
        assert sup._cleanup.statistics().coalesced == 0
        async with sup.subscribe_events() as stream:
            release.set()
            with anyio.fail_after(10):
                async for event in stream:  # the pass ends; no sample taken meanwhile
                    if isinstance(event, CleanupCompleted):
                        break
        assert calls == 1
        started = anyio.Event()
        release = anyio.Event()
        release.set()
        await sup.update_metrics()  # the cooldown has passed and nothing runs
        with anyio.fail_after(10):
            await started.wait()
        assert calls == 2
