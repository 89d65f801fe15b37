"""
Big payloads cross to and from worker processes off the event loop, and whole.

A big ``str`` argument is encoded in pieces and travels out of band; a big
``bytes`` result comes back through a spill file read with the GIL released;
other big outcomes are loaded in the executor's manager thread. Whole means
equal content, non-ASCII characters and lone surrogates included, and no spill
file left behind. Off the loop is shown by a heartbeat task that keeps ticking
while the real encoding and loading work runs in a thread; how long the loop is
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


async def test_a_200_mib_payload_crosses_while_the_loop_keeps_ticking(
    lane: ProcessLane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a 200 MiB str argument is encoded and a 200 MiB bytes result is loaded
    (the real functions, watched), the event loop keeps running a heartbeat task:
    its ticks land inside that work, which therefore runs off the loop and lets go
    of the GIL (work holding it for one long C call, such as pickling the str
    in-band, lets at most a tick slip in at either edge). Ticks are counted, not timed."""
    from resource_supervisor.broker._local import _delivery, _submission
    from resource_supervisor.broker._local._big_outcome import load_outcome
    from resource_supervisor.broker._pickling import pickle_call_spilled

    encode, load = _Heartbeat(), _Heartbeat()
    monkeypatch.setattr(_submission, "pickle_call_spilled", encode.spy(pickle_call_spilled))
    monkeypatch.setattr(_delivery, "load_outcome", load.spy(load_outcome))
    text = "x" * (200 * MiB)
    async with anyio.create_task_group() as tg:
        tg.start_soon(encode.beat)
        tg.start_soon(load.beat)
        assert await lane.run(len, (text,), timeout=None) == len(text)
        del text
        result = await lane.run(_workers.big_result, (200 * MiB,), timeout=None)
        assert len(result) == 200 * MiB
        del result
        tg.cancel_scope.cancel()
    assert len(encode.ticks_during_work) == len(load.ticks_during_work) == 1
    assert encode.ticks_during_work[0] >= 3
    assert load.ticks_during_work[0] >= 3
    assert _spill_files() == []
