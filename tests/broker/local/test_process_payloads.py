"""
Big payloads cross to and from worker processes off the event loop, and whole.

A big ``str`` argument is encoded in pieces and travels out of band, a long list
is pickled in pieces; every result comes back as one frame on the slot's result
pipe, and a big one is read and decoded in a thread, a ``bytes`` or ``str``
filled in place with the GIL released. Whole means equal content and type,
non-ASCII characters and lone surrogates included, and no spill file left behind.
Off the loop is shown by a heartbeat task that keeps ticking while the real
encoding and decoding work runs in a thread; how long the loop is
held is measured in the payload benchmark (``benchmarks/processes.py``), never
asserted here.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import pytest

from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._spill import spill_prefix
from tests import _workers
from tests._settings import lane_settings
from tests.broker.local import _payload_workers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
T = TypeVar("T")


@pytest.fixture
async def lane() -> AsyncIterator[ProcessLane]:
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        assert await lane.run(_workers.square, (2,), timeout=None) == 4  # worker started
        yield lane


def _spill_files() -> list[str]:
    return [p.name for p in Path(tempfile.gettempdir()).glob(f"{spill_prefix()}*")]


async def test_big_str_argument_arrives_whole(lane: ProcessLane) -> None:
    """A 2 MiB str with non-ASCII characters and a lone surrogate arrives equal."""
    text = _workers.big_text(2 * MiB) + "\ud800"
    expected = ("str", len(text), zlib.crc32(text.encode("utf-8", "surrogatepass")))
    assert await lane.run(_workers.text_digest, (text,), timeout=None) == expected
    assert _spill_files() == []


async def test_big_results_return_whole_and_leave_no_file(lane: ProcessLane) -> None:
    """Big bytes, str and error outcomes return whole; no spill file stays."""
    assert await lane.run(_workers.big_result, (3 * MiB,), timeout=None) == b"x" * (3 * MiB)
    text = await lane.run(_workers.big_text, (MiB,), timeout=None)
    assert text == _workers.big_text(MiB)
    with pytest.raises(KeyError) as raised:
        await lane.run(_workers.raise_key_error, ("k" * (MiB),), timeout=None)
    assert raised.value.args == ("k" * MiB,)
    assert _spill_files() == []


KINDS = ("bytes", "ascii", "latin-1", "ucs2", "ucs4", "list", "tuple", "dict")


@pytest.mark.parametrize("size", [100, 70_000, 3 * MiB])
async def test_every_kind_of_result_comes_back_equal_and_of_its_type(
    lane: ProcessLane, size: int
) -> None:
    """Small, medium (over one pipe read) and big results of each kind, str of every
    storage width with lone surrogates included, come back equal and of the same type,
    in one outcome path; the slot serves on and nothing crashed."""
    for kind in KINDS:
        result = await lane.run(_payload_workers.make_result, (kind, size), timeout=None)
        expected = _payload_workers.make_result(kind, size)
        assert type(result) is type(expected), kind
        assert result == expected, kind
    results = await asyncio.gather(
        *(lane.run(_payload_workers.make_result, (k, size), timeout=None) for k in KINDS * 2)
    )
    assert results == [_payload_workers.make_result(k, size) for k in KINDS * 2]
    assert lane.statistics().crashed_total == 0


async def test_a_long_list_argument_arrives_whole(lane: ProcessLane) -> None:
    """A list and a tuple of many small bytes (pickled in pieces) arrive equal."""
    items = [bytes([i % 256]) * 100 for i in range(40_000)]
    expected = ("list", len(items), zlib.crc32(b"".join(items)))
    assert await lane.run(_payload_workers.digest_items, (items,), timeout=None) == expected
    expected = ("tuple", len(items), zlib.crc32(b"".join(items)))
    assert await lane.run(_payload_workers.digest_items, (tuple(items),), timeout=None) == expected
    assert _spill_files() == []


class _Heartbeat:
    """A loop task that counts its ticks, and how many fell inside a thread's work."""

    def __init__(self) -> None:
        self.ticks = 0
        self.ticks_during_work: list[int] = []

    def spy(self, work: Callable[..., T]) -> Callable[..., T]:
        """Wrap the real *work*, off the loop, to count the ticks made while it runs."""

        def spied(*args: object) -> T:
            assert threading.current_thread() is not threading.main_thread()
            before = self.ticks
            try:
                return work(*args)
            finally:
                self.ticks_during_work.append(self.ticks - before)

        return spied

    async def beat(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1


async def test_200_mib_payloads_cross_while_the_loop_keeps_ticking(
    lane: ProcessLane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a 200 MiB str and a 200 MiB list argument are encoded, and 200 MiB results
    of each kind (bytes, str, a list of small bytes) are read and decoded (the real
    functions, watched), the event loop keeps running a heartbeat task: its ticks land
    inside that work, which therefore runs off the loop and lets go of the GIL (work
    holding it for one long C call, such as pickling the str in-band, lets at most a
    tick slip in at either edge). Ticks are counted, not timed."""
    from resource_supervisor.broker._local import _delivery, _submission
    from resource_supervisor.broker._local._big_frames import read_big_frame
    from resource_supervisor.broker._pickling import pickle_call_spilled

    encode, load = _Heartbeat(), _Heartbeat()
    monkeypatch.setattr(_submission, "pickle_call_spilled", encode.spy(pickle_call_spilled))
    monkeypatch.setattr(_delivery, "read_big_frame", load.spy(read_big_frame))
    async with anyio.create_task_group() as tg:
        tg.start_soon(encode.beat)
        tg.start_soon(load.beat)
        text = "x" * (200 * MiB)
        assert await lane.run(len, (text,), timeout=None) == len(text)
        del text
        items = [bytes([i % 256]) * 1024 for i in range(200 * 1024)]  # distinct objects
        assert await lane.run(len, (items,), timeout=None) == len(items)
        del items
        for kind, length in (("bytes", 200 * MiB), ("ascii", 200 * MiB), ("list", 200 * 1024)):
            result = await lane.run(_payload_workers.make_result, (kind, 200 * MiB), timeout=None)
            assert len(result) == length  # type: ignore[arg-type]
            del result
        tg.cancel_scope.cancel()
    assert len(encode.ticks_during_work) == 2
    assert len(load.ticks_during_work) == 3
    assert min(encode.ticks_during_work) >= 3
    assert min(load.ticks_during_work) >= 3
    assert _spill_files() == []


async def test_a_worker_killed_mid_frame_fails_only_its_running_call(tmp_path: Path) -> None:
    """
    A worker SIGKILLed while writing a big outcome frame (the service's thread is reading
    it) fails that call with WorkerCrashedError; the calls batched with it either ran
    (before it) or never started and ran once on a new worker; no file is left behind.
    """
    from resource_supervisor._exceptions import WorkerCrashedError
    from resource_supervisor.broker._local import _delivery
    from resource_supervisor.broker._local._big_frames import read_big_frame

    reads: list[object] = []

    def watched(*args: object) -> object:
        outcome = read_big_frame(*args)  # type: ignore[arg-type]
        reads.append(outcome[0])
        return outcome

    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        assert await lane.run(_workers.square, (2,), timeout=None) == 4
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_delivery, "read_big_frame", watched)
            calls = [
                lane.run(_workers.record, (str(tmp_path), f"c{i}", i), timeout=None)
                for i in range(8)
            ]
            dies = lane.run(_payload_workers.die_mid_frame, (3 * MiB,), timeout=None)
            calls.insert(4, dies)  # type: ignore[arg-type]
            results = await asyncio.gather(*calls, return_exceptions=True)
        crash = results.pop(4)
        assert isinstance(crash, WorkerCrashedError), crash
        assert crash.signal == 9
        assert results == list(range(8))
        for i in range(8):
            assert (tmp_path / f"c{i}").read_text() == "x\n"
        assert reads == [None]  # the thread saw the pipe end mid-frame
        assert lane.statistics().crashed_total == 1
        assert await lane.run(_workers.add, (1, 1), timeout=None) == 2
    assert _spill_files() == []


async def test_cancelling_the_call_whose_big_frame_is_being_read(tmp_path: Path) -> None:
    """
    A call cancelled while its worker is in the middle of writing its big frame (and the
    lane's thread is reading it) is the running one: its worker is killed, the thread
    sees the pipe end, and the calls handed over after it run once on a new worker;
    the kill is not counted as a crash.
    """
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        await asyncio.gather(*(lane.run(_workers.square, (i,), timeout=None) for i in range(40)))
        stalled = asyncio.ensure_future(
            lane.run(_payload_workers.stall_mid_frame, (3 * MiB, str(tmp_path)), timeout=None)
        )
        later = [
            asyncio.ensure_future(
                lane.run(_workers.record, (str(tmp_path), f"c{i}", i), timeout=None)
            )
            for i in range(4)
        ]
        with anyio.fail_after(20):  # hang guard: the worker lives in another process
            while not (tmp_path / "stalled").exists():  # noqa: ASYNC110 - another process
                await anyio.sleep(0.005)
            while not any(slot.reading_big for slot in lane._slots):  # noqa: ASYNC110
                await anyio.sleep(0.005)
        stalled.cancel()
        assert await asyncio.gather(*later) == list(range(4))
        with pytest.raises(asyncio.CancelledError):
            await stalled
        for i in range(4):
            assert (tmp_path / f"c{i}").read_text() == "x\n"
        assert lane.statistics().crashed_total == 0
        assert await lane.run(_workers.add, (1, 1), timeout=None) == 2
    assert _spill_files() == []
