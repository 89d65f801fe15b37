"""
Big payloads cross to and from worker processes off the event loop, and whole.

A big ``str`` argument is encoded in pieces and travels out of band; a big
``bytes`` result comes back through a spill file read with the GIL released;
other big outcomes are loaded in the executor's manager thread. Whole means
equal content, non-ASCII characters and lone surrogates included, and no spill
file left behind. Loop time is compared, never asserted against a clock: the
lane's worst loop gap against the gap the same work makes on the loop.
"""

from __future__ import annotations

import asyncio
import pickle
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from resource_supervisor._config import ConcurrencySettings
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._spill import spill_prefix
from tests import _workers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


@pytest.fixture
async def lane() -> AsyncIterator[ProcessLane]:
    async with ProcessLane(ConcurrencySettings(idle_timeout=30.0), max_workers=1) as lane:
        assert await lane.run(_workers.square, (2,), timeout=None) == 4  # worker started
        yield lane


def _spill_files() -> list[str]:
    return [p.name for p in Path(tempfile.gettempdir()).glob(f"{spill_prefix()}*")]


async def _worst_gap(work: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    """Run *work* beside a 1 ms ticker; return the ticker's worst lateness and the result."""
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await asyncio.sleep(0.01)
        result = await work()
        await asyncio.sleep(0.01)
        tg.cancel_scope.cancel()
    return worst, result


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


async def test_big_str_argument_holds_the_loop_less_than_pickling_it_there(
    lane: ProcessLane,
) -> None:
    """A 64 MiB str argument: the lane's worst loop gap (best of three) is under half
    the gap that pickling it on the loop makes."""
    text = "x" * (64 * MiB)

    async def on_loop() -> object:
        return len(pickle.dumps((_workers.text_digest, (text,)), protocol=5))

    async def in_lane() -> object:
        return await lane.run(_workers.text_digest, (text,), timeout=None)

    loop_gap, _ = await _worst_gap(on_loop)
    gaps = []
    for _ in range(3):
        gap, result = await _worst_gap(in_lane)
        assert result == ("str", len(text), zlib.crc32(text.encode()))
        gaps.append(gap)
    assert min(gaps) < loop_gap / 2, (gaps, loop_gap)


async def test_big_bytes_result_holds_the_loop_less_than_unpickling_it_there(
    lane: ProcessLane,
) -> None:
    """A 64 MiB bytes result: the lane's worst loop gap (best of three) is under half
    the gap that unpickling it on the loop makes."""
    pickled = pickle.dumps(b"x" * (64 * MiB), protocol=5)

    async def on_loop() -> object:
        return len(pickle.loads(pickled))

    async def in_lane() -> object:
        return len(await lane.run(_workers.big_result, (64 * MiB,), timeout=None))

    loop_gap, _ = await _worst_gap(on_loop)
    gaps = []
    for _ in range(3):
        gap, size = await _worst_gap(in_lane)
        assert size == 64 * MiB
        gaps.append(gap)
    assert min(gaps) < loop_gap / 2, (gaps, loop_gap)
