"""
Tests of the sampler's read thread (_sources._read_thread) and of the sampler's use
of it: real threads, a real fork, the real /proc reads.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from resource_supervisor._sampler import Sampler
from resource_supervisor._sources._read_thread import ReadThread

if TYPE_CHECKING:
    from collections.abc import Callable

    from resource_supervisor._sources._proc import HostMemory

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
