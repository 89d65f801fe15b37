"""
Tests of the sampler's read thread (_sources._read_thread) and of the sampler's use
of it: real threads, a real fork, the real /proc reads.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
import pytest

from resource_supervisor._sampler import Sampler
from resource_supervisor._sources._read_thread import ReadThread

if TYPE_CHECKING:
    from collections.abc import Callable

    from resource_supervisor._snapshot import MetricValue
    from resource_supervisor._sources._proc import HostMemory

T = TypeVar("T")

GUARD = 30.0  # seconds; a hang guard only
NAME = "resource-supervisor sampler"


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == NAME]


async def test_run_returns_or_raises_from_its_own_thread() -> None:
    """A pass runs in the read thread; its result comes back, and so does what it raised."""
    reader = ReadThread()
    reader.start()
    try:
        with anyio.fail_after(GUARD):
            assert await reader.run(lambda: threading.current_thread().name) == NAME
            with pytest.raises(ZeroDivisionError):
                await reader.run(lambda: 1 // 0)
            assert await reader.run(lambda: 7) == 7  # still serving after a failure
    finally:
        reader.stop()
    assert not reader.running
    assert sampler_threads() == []


async def test_cancelled_caller_returns_at_once_and_the_thread_serves_on() -> None:
    """Cancelling the wait does not wait for the pass; the pass ends in the thread and
    the next call is served."""
    reader = ReadThread()
    reader.start()
    release = threading.Event()
    finished = threading.Event()

    def slow() -> int:
        release.wait(GUARD)
        finished.set()
        return 1

    try:
        with anyio.fail_after(GUARD):
            with anyio.move_on_after(0.05) as scope:
                await reader.run(slow)
            assert scope.cancelled_caught
            assert not finished.is_set()  # the caller did not wait for it
            release.set()
            assert await reader.run(lambda: 2) == 2  # after the abandoned pass
            assert finished.is_set()
    finally:
        release.set()
        reader.stop()


async def test_run_before_start_and_after_stop_is_refused() -> None:
    reader = ReadThread()
    with pytest.raises(RuntimeError, match="not started"):
        await reader.run(lambda: 1)
    reader.start()
    reader.start()  # idempotent: one thread
    assert len(sampler_threads()) == 1
    reader.stop()
    reader.stop()
    with pytest.raises(RuntimeError, match="not started"):
        await reader.run(lambda: 1)


async def test_sampler_reads_its_files_in_its_thread_and_stops_it_at_close() -> None:
    """The kernel reads of a sample run in the sampler's thread, not the loop's, and
    closing the sampler leaves no thread."""
    seen: list[str] = []
    with Sampler() as sampler:
        assert len(sampler_threads()) == 1
        proc = sampler._proc
        read_host_memory: Callable[[], HostMemory] = proc.read_host_memory

        def spy() -> HostMemory:
            seen.append(threading.current_thread().name)
            return read_host_memory()

        proc.read_host_memory = spy  # type: ignore[method-assign]
        with anyio.fail_after(GUARD):
            data = await sampler.sample()
        assert int(data["memory_limit_bytes"]) > 0
    assert seen == [NAME]
    assert sampler_threads() == []


def _child_samples(sampler: Sampler) -> int:
    """In a forked child: sample (no read thread there) and report through the status."""
    try:
        running = sampler._reader.running
        data = asyncio.run(asyncio.wait_for(sampler.sample(), GUARD))
        ok = not running and int(data["memory_limit_bytes"]) > 0
    except BaseException:  # noqa: BLE001 - reported as the exit status
        return 2
    return 0 if ok else 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads running
async def test_a_forked_child_samples_without_the_read_thread() -> None:
    """os.fork() copies no thread: in the child the sampler reads in the caller's
    thread (and its lock is new, though the thread could hold it at the fork)."""
    with Sampler() as sampler:
        with anyio.fail_after(GUARD):
            await sampler.sample()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(_child_samples(sampler))
        with anyio.fail_after(GUARD):
            _, status = await anyio.to_thread.run_sync(os.waitpid, pid, 0, abandon_on_cancel=True)
        assert os.waitstatus_to_exitcode(status) == 0
        with anyio.fail_after(GUARD):
            await sampler.sample()  # the parent's thread is untouched


async def _outcomes_of(
    reader: ReadThread, passes: list[tuple[str, float]]
) -> tuple[list[str], dict[str, float]]:
    """Schedule each ``(name, when)``; the order outcomes reach the loop, and when each ran."""
    arrived: list[str] = []
    ran_at: dict[str, float] = {}
    done = anyio.Event()

    def run(name: str) -> str:
        ran_at[name] = time.monotonic()
        return name

    def on_done(outcome: tuple[bool, object]) -> None:
        ok, value = outcome
        assert ok
        assert isinstance(value, str)
        arrived.append(value)
        if len(arrived) == len(passes):
            done.set()

    for name, when in passes:
        reader.schedule(functools.partial(run, name), when, on_done)
    with anyio.fail_after(GUARD):
        await done.wait()
    return arrived, ran_at


async def test_scheduled_passes_run_at_their_time_in_time_order() -> None:
    """A pass waits for its time in the thread; one due sooner, scheduled later, is not
    held up by it; each outcome reaches the loop through the callback."""
    reader = ReadThread()
    reader.start()
    try:
        now = time.monotonic()
        later, soon = now + 0.3, now + 0.05
        arrived, ran_at = await _outcomes_of(reader, [("later", later), ("soon", soon), ("now", 0)])
        assert arrived == ["now", "soon", "later"]
        assert ran_at["soon"] >= soon
        assert ran_at["later"] >= later
    finally:
        reader.stop()


async def test_a_cancelled_scheduled_pass_never_runs() -> None:
    reader = ReadThread()
    reader.start()
    ran: list[str] = []
    try:
        skipped = reader.schedule(lambda: ran.append("skipped"), time.monotonic() + 0.05, print)
        skipped.cancel()
        arrived, _ = await _outcomes_of(reader, [("after", time.monotonic() + 0.1)])
        assert arrived == ["after"]
        assert ran == []
    finally:
        reader.stop()


async def test_passes_waiting_when_the_thread_stops_are_told_so() -> None:
    """Stopping the thread with a pass scheduled for later: its caller gets a
    RuntimeError through the callback instead of waiting for ever."""
    reader = ReadThread()
    reader.start()
    outcomes: list[tuple[bool, object]] = []
    told = anyio.Event()

    def on_done(outcome: tuple[bool, object]) -> None:
        outcomes.append(outcome)
        told.set()

    reader.schedule(lambda: 1, time.monotonic() + GUARD, on_done)
    await anyio.to_thread.run_sync(reader.stop)
    with anyio.fail_after(GUARD):
        await told.wait()
    [(ok, error)] = outcomes
    assert not ok
    assert isinstance(error, RuntimeError)
    assert "stopped" in str(error)
    assert sampler_threads() == []


async def test_a_supervisor_on_a_timer_reads_at_the_deadline_in_the_thread() -> None:
    """Timer samples of the built-in sampler read ahead: the thread does the reads at
    the deadline and wakes the loop with them (no hand-over from the loop), while
    update_metrics() on demand still hands its reads to the thread."""
    from resource_supervisor import Supervisor

    from .._settings import quiet

    threads: list[str] = []
    ways: list[str] = []
    async with Supervisor(quiet(monitoring_enabled=True, monitoring_interval=0.05)) as sup:
        sampler = sup._source
        assert isinstance(sampler, Sampler)
        read_core, read_at, run = sampler._read_core, sampler.read_at, sampler._reader.run

        def reading() -> dict[str, MetricValue]:
            threads.append(threading.current_thread().name)
            return read_core()

        def reading_ahead(when: float, on_done: Callable[[tuple[bool, object]], None]) -> object:
            ways.append("ahead")
            return read_at(when, on_done)

        async def handing_over(func: Callable[[], T]) -> T:
            ways.append("handed over")
            return await run(func)

        sampler._read_core = reading  # type: ignore[method-assign]
        sampler.read_at = reading_ahead  # type: ignore[assignment,method-assign]
        sampler._reader.run = handing_over  # type: ignore[method-assign]
        with anyio.fail_after(GUARD):
            while len(threads) < 3:  # noqa: ASYNC110 - counted in the read thread
                await anyio.sleep(0.02)
        assert "ahead" in ways
        assert "handed over" not in ways
        ways.clear()
        with anyio.fail_after(GUARD):
            await sup.update_metrics()
        assert ways == ["handed over"]
    assert set(threads) == {NAME}
