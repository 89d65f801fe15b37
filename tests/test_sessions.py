"""Tests for the session registry (resource_supervisor._sessions)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resource_supervisor._cleanup import Cleanup, CleanupDispatcher, CleanupRequest
from resource_supervisor._exceptions import SupervisorClosedError
from resource_supervisor._sessions import SessionRegistry, SessionStatistics
from resource_supervisor._snapshot import PressureLevel

if TYPE_CHECKING:
    import contextlib

NORMAL = CleanupRequest(aggressive=False, level=PressureLevel.WARNING, reason="test", snapshot=None)
AGGRESSIVE = CleanupRequest(
    aggressive=True, level=PressureLevel.CRITICAL, reason="test", snapshot=None
)


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Closer:
    """Records the ids passed to on_close."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def __call__(self, session_id: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.closed.append(session_id)


def make_registry(
    clock: ManualClock, *, ttl: float = 60.0, aggressive_ttl: float = 10.0
) -> SessionRegistry:
    return SessionRegistry(ttl=ttl, aggressive_ttl=aggressive_ttl, clock=clock, close_timeout=5.0)


async def test_open_counts_and_reopen_touches() -> None:
    """open() adds a session once; opening it again only restarts its idle time."""
    clock = ManualClock()
    registry = make_registry(clock)
    registry.open("a")
    clock.advance(50)
    registry.open("a")
    registry.open("b")
    assert registry.active == 2
    assert "a" in registry
    clock.advance(20)  # "a" idles 20 s since its re-open, below the 60 s ttl
    await registry.cleanup(NORMAL)
    assert registry.active == 2
    assert registry.statistics().opened_total == 2
    await registry.aclose()


async def test_touch_restarts_idle_time_and_rejects_unknown_ids() -> None:
    """touch() keeps a session from idling out; an unknown id raises KeyError naming it."""
    clock = ManualClock()
    registry = make_registry(clock)
    registry.open("a")
    clock.advance(50)
    registry.touch("a")
    clock.advance(50)
    await registry.cleanup(NORMAL)
    assert "a" in registry
    with pytest.raises(KeyError, match="'ghost'"):
        registry.touch("ghost")
    await registry.aclose()


async def test_cleanup_evicts_idle_sessions_past_ttl() -> None:
    """Normal cleanup evicts sessions idle longer than ttl and runs their on_close."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock)
    registry.open("old", on_close=closer)
    clock.advance(45)
    registry.open("fresh", on_close=closer)
    clock.advance(30)  # old: 75 s idle, fresh: 30 s
    await registry.cleanup(NORMAL)
    assert closer.closed == ["old"]
    assert "old" not in registry
    assert "fresh" in registry
    assert registry.statistics().evicted_total == 1
    await registry.aclose()


async def test_aggressive_cleanup_uses_shorter_ttl() -> None:
    """Aggressive cleanup evicts sessions idle longer than aggressive_ttl."""
    clock = ManualClock()
    registry = make_registry(clock)
    registry.open("a")
    clock.advance(30)
    await registry.cleanup(NORMAL)
    assert registry.active == 1
    await registry.cleanup(AGGRESSIVE)
    assert registry.active == 0
    assert registry.statistics().evicted_total == 1
    await registry.aclose()


async def test_session_in_use_is_never_evicted() -> None:
    """A session inside a session() block survives aggressive cleanup however long it idles."""
    clock = ManualClock()
    registry = make_registry(clock)
    async with registry.session("busy"):
        assert registry.statistics().in_use == 1
        clock.advance(10_000)
        await registry.cleanup(AGGRESSIVE)
        assert "busy" in registry
    assert registry.statistics().in_use == 0
    await registry.aclose()


async def test_leaving_session_block_keeps_session_and_touches_it() -> None:
    """Leaving a session() block does not close the session; its idle time starts at exit."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock)
    async with registry.session("conv", on_close=closer):
        clock.advance(100)
    assert "conv" in registry
    assert closer.closed == []
    clock.advance(59)
    await registry.cleanup(NORMAL)
    assert "conv" in registry
    clock.advance(2)
    await registry.cleanup(NORMAL)
    assert closer.closed == ["conv"]
    await registry.aclose()


async def test_nested_blocks_count_use_once_per_session() -> None:
    """Two blocks on one session keep it in use until both have left."""
    clock = ManualClock()
    registry = make_registry(clock)
    async with registry.session("s"):
        async with registry.session("s"):
            assert registry.statistics().in_use == 1
        clock.advance(1000)
        await registry.cleanup(AGGRESSIVE)
        assert "s" in registry
    assert registry.statistics() == SessionStatistics(
        active=1, in_use=0, opened_total=1, evicted_total=0
    )
    await registry.aclose()


async def test_cancelled_block_releases_session() -> None:
    """A session() block left by cancellation releases the session (in_use back to 0)."""
    clock = ManualClock()
    registry = make_registry(clock)

    async def use() -> None:
        async with registry.session("s"):
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(use)
        await anyio.wait_all_tasks_blocked()
        assert registry.statistics().in_use == 1
        tg.cancel_scope.cancel()
    assert registry.statistics().in_use == 0
    assert "s" in registry
    await registry.aclose()


async def test_close_runs_on_close_and_ignores_unknown_ids() -> None:
    """close() removes the session and awaits on_close; an unknown id does nothing."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock)
    registry.open("a", on_close=closer)
    await registry.close("a")
    await registry.close("a")
    await registry.close("never-opened")
    assert closer.closed == ["a"]
    assert registry.active == 0
    await registry.aclose()


async def test_close_while_in_use_ends_block_quietly() -> None:
    """Closing a session inside its block is allowed; leaving the block does not reopen it."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock)
    async with registry.session("s", on_close=closer):
        await registry.close("s")
    assert "s" not in registry
    assert closer.closed == ["s"]
    await registry.aclose()


async def test_on_close_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A failing on_close is logged with its traceback; other sessions still close."""
    clock = ManualClock()
    closer = Closer()

    async def broken(session_id: str) -> None:
        raise RuntimeError("cannot free")

    registry = make_registry(clock)
    registry.open("bad", on_close=broken)
    registry.open("good", on_close=closer)
    clock.advance(100)
    with caplog.at_level(logging.WARNING, logger="resource_supervisor.sessions"):
        await registry.cleanup(NORMAL)
    assert closer.closed == ["good"]
    assert registry.active == 0
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'bad'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_hanging_on_close_is_bounded_by_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An on_close that hangs is abandoned after close_timeout and logged."""
    clock = ManualClock()

    async def hang(session_id: str) -> None:
        await anyio.sleep_forever()

    registry = SessionRegistry(ttl=1, aggressive_ttl=1, clock=clock, close_timeout=0.05)
    registry.open("stuck", on_close=hang)
    with anyio.fail_after(10), caplog.at_level(logging.WARNING, "resource_supervisor.sessions"):
        await registry.close("stuck")
    assert "stuck" not in registry
    assert any("did not finish" in r.getMessage() for r in caplog.records)
    await registry.aclose()


async def test_cancelled_close_still_runs_on_close_to_completion() -> None:
    """A close() cancelled while on_close runs lets it finish, then raises the cancellation."""
    clock = ManualClock()
    started, release = anyio.Event(), anyio.Event()
    finished: list[str] = []

    async def slow(session_id: str) -> None:
        started.set()
        await release.wait()
        finished.append(session_id)

    registry = make_registry(clock)
    registry.open("s", on_close=slow)
    after_close: list[bool] = []
    closer_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def closer() -> None:
            with closer_scope:
                await registry.close("s")
                after_close.append(True)

        tg.start_soon(closer)
        await started.wait()
        closer_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert finished == []
        release.set()
    assert finished == ["s"]
    assert after_close == []  # the cancellation was raised after on_close
    assert closer_scope.cancelled_caught
    assert registry.active == 0
    await registry.aclose()


async def test_aclose_closes_everything_and_refuses_new_sessions() -> None:
    """aclose closes every session (in use too), is idempotent, and refuses later opens."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock)
    registry.open("a", on_close=closer)
    async with registry.session("b", on_close=closer):
        await registry.aclose()
    await registry.aclose()
    assert sorted(closer.closed) == ["a", "b"]
    assert registry.active == 0
    with pytest.raises(SupervisorClosedError):
        registry.open("c")
    with pytest.raises(SupervisorClosedError):
        async with registry.session("c"):
            pass


async def test_registry_is_a_cleanup_participant() -> None:
    """The registry registers with the dispatcher as a Cleanup object and evicts through it."""
    clock = ManualClock()
    registry = make_registry(clock)
    assert isinstance(registry, Cleanup)
    dispatcher = CleanupDispatcher(handler_timeout=5, measure_used_bytes=lambda: 0)
    dispatcher.register(registry, name="sessions")
    registry.open("a")
    clock.advance(61)
    report = await dispatcher.run(NORMAL)
    assert report.ok
    assert registry.active == 0
    await registry.aclose()


@pytest.mark.parametrize(
    ("ttl", "aggressive_ttl", "message"),
    [
        (0, 1, "ttl"),
        (10, -1, "aggressive_ttl"),
        (10, float("nan"), "aggressive_ttl"),
        (5, 6, "must not exceed"),
    ],
)
def test_rejects_bad_durations(ttl: float, aggressive_ttl: float, message: str) -> None:
    """Non-positive or non-finite TTLs, and an aggressive_ttl above ttl, raise ValueError."""
    with pytest.raises(ValueError, match=message):
        SessionRegistry(ttl=ttl, aggressive_ttl=aggressive_ttl)


async def test_expire_removes_only_sessions_idle_past_ttl() -> None:
    """expire() takes sessions idle longer than ttl (not in use) and returns their closer."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock, ttl=60.0)
    registry.open("a", on_close=closer)
    registry.open("plain")
    clock.advance(30)
    registry.open("b", on_close=closer)
    clock.advance(20)
    registry.touch("a")  # a moves behind b: the order is by last use
    clock.advance(20)  # plain 70 s idle, b 40 s, a 20 s
    async with registry.session("busy"):
        clock.advance(100)  # every session but busy is now past the TTL
        assert registry.expire() is not None
        assert set(closer.closed) == set()  # closers run only when awaited
        assert "busy" in registry
        assert registry.active == 1
    assert registry.statistics().evicted_total == 3
    assert registry.expire() is None  # busy was used just now


async def test_expire_runs_on_close_and_skips_fresh_sessions() -> None:
    """The returned closer awaits on_close of the expired sessions only."""
    clock = ManualClock()
    closer = Closer()
    registry = make_registry(clock, ttl=60.0)
    registry.open("old", on_close=closer)
    clock.advance(50)
    registry.open("fresh", on_close=closer)
    clock.advance(11)  # old 61 s idle, fresh 11 s
    closing = registry.expire()
    assert closing is not None
    await closing()
    assert closer.closed == ["old"]
    assert "fresh" in registry
    assert registry.expire() is None
    await registry.aclose()


_IDS = st.sampled_from(["a", "b", "c"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), _IDS),
        st.tuples(st.just("touch"), _IDS),
        st.tuples(st.just("enter"), _IDS),
        st.tuples(st.just("exit"), st.integers(0, 5)),
        st.tuples(st.just("close"), _IDS),
        st.tuples(st.just("advance"), st.sampled_from([1.0, 5.0, 11.0, 30.0, 61.0])),
        st.tuples(st.just("expire"), st.just("")),
        st.tuples(st.just("aggressive"), st.just("")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS)
@example(  # a touched session moves behind an older one: expiry must still find it
    ops=[("open", "a"), ("open", "b"), ("advance", 61.0), ("touch", "a"), ("expire", "")]
)
@example(  # leaving a block counts as a use
    ops=[("enter", "a"), ("open", "b"), ("advance", 61.0), ("exit", 0), ("expire", "")]
)
def test_registry_matches_a_plain_model(ops: list[tuple[str, object]]) -> None:
    """
    Random opens, touches, nested blocks, closes, expiry and cleanup against a plain
    dict model: the same sessions are open, in use and evicted at every step.
    """
    anyio.run(_replay, ops)


async def _replay(ops: list[tuple[str, object]]) -> None:
    ttl, aggressive_ttl = 60.0, 10.0
    clock = ManualClock()
    registry = make_registry(clock, ttl=ttl, aggressive_ttl=aggressive_ttl)
    # model: id -> [last_used, in_use, generation]
    model: dict[str, list[float]] = {}
    blocks: list[tuple[str, float, contextlib.AbstractAsyncContextManager[None]]] = []
    generation = 0.0
    evicted = 0

    def idle(limit: float) -> set[str]:
        return {
            sid for sid, (used, in_use, _) in model.items()
            if in_use == 0 and clock.now - used > limit
        }  # fmt: skip

    for op, arg in ops:
        if op == "open":
            sid = str(arg)
            if sid in model:
                model[sid][0] = clock.now
            else:
                generation += 1
                model[sid] = [clock.now, 0, generation]
            registry.open(sid)
        elif op == "touch" and str(arg) in model:
            model[str(arg)][0] = clock.now
            registry.touch(str(arg))
        elif op == "enter":
            sid = str(arg)
            if sid not in model:
                generation += 1
                model[sid] = [clock.now, 0, generation]
            model[sid][0] = clock.now
            model[sid][1] += 1
            block = registry.session(sid)
            await block.__aenter__()
            blocks.append((sid, model[sid][2], block))
        elif op == "exit" and blocks:
            sid, gen, leaving = blocks.pop(int(str(arg)) % len(blocks))
            await leaving.__aexit__(None, None, None)
            if sid in model and model[sid][2] == gen:
                model[sid][1] -= 1
                model[sid][0] = clock.now
        elif op == "close":
            model.pop(str(arg), None)
            await registry.close(str(arg))
        elif op == "advance":
            clock.advance(float(str(arg)))
        elif op == "expire":
            gone = idle(ttl)
            for sid in gone:
                del model[sid]
            evicted += len(gone)
            closing = registry.expire()
            if closing is not None:
                await closing()
        elif op == "aggressive":
            gone = idle(aggressive_ttl)
            for sid in gone:
                del model[sid]
            evicted += len(gone)
            await registry.cleanup(AGGRESSIVE)
        stats = registry.statistics()
        assert set(model) == {sid for sid in ("a", "b", "c") if sid in registry}
        assert stats.active == len(model)
        assert stats.in_use == sum(1 for _, in_use, _ in model.values() if in_use > 0)
        assert stats.evicted_total == evicted
    for _, _, remaining in reversed(blocks):
        await remaining.__aexit__(None, None, None)
    await registry.aclose()
    assert registry.statistics().in_use == 0


# -- on_close callbacks raising anything ------------------------------------------------


@pytest.mark.parametrize(
    "exc_type",
    [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError, ValueError],
    ids=lambda t: t.__name__,
)
async def test_on_close_raising_anything_is_counted_and_the_others_run(
    exc_type: type[BaseException],
) -> None:
    """
    An on_close raising any BaseException (its own CancelledError included) is logged
    and counted in close_failures; the other sessions' callbacks still run, and the
    caller is neither interrupted nor cancelled.
    """
    closed: list[str] = []

    async def bad(session_id: str) -> None:
        raise exc_type("from on_close")

    async def good(session_id: str) -> None:
        await anyio.sleep(0.01)
        closed.append(session_id)

    registry = make_registry(ManualClock())
    registry.open("bad", on_close=bad)
    registry.open("good-1", on_close=good)
    registry.open("good-2", on_close=good)
    with anyio.fail_after(5):
        await registry.aclose()
    await anyio.lowlevel.checkpoint()  # no cancellation left pending
    assert sorted(closed) == ["good-1", "good-2"]
    assert registry.statistics().close_failures == 1
