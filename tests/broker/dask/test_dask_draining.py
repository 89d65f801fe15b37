"""Tests of the slots of Dask calls cancelled while running (real LocalCluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from resource_supervisor.broker._dask._draining import Drains
from resource_supervisor.broker._dask._lane import DaskLane
from tests import _dask_workers as w
from tests._settings import dask_settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


async def _call(lane: DaskLane, func: Callable[..., object], args: tuple[object, ...]) -> None:
    await lane.run(func, args, timeout=None)


async def _recorded(directory: Path, name: str) -> None:
    with anyio.fail_after(60):  # a hang guard: a loaded machine schedules slowly
        while w.count(directory, name) < 1:  # noqa: ASYNC110 - another process writes it
            await anyio.sleep(0.01)


async def test_slot_is_freed_when_the_cancelled_call_kills_its_worker(tmp_path: Path) -> None:
    """A cancelled call that then kills its worker frees its slot (the worker is gone)."""
    release = tmp_path / "release"
    async with DaskLane(dask_settings(poll_interval=0.2), max_workers=2) as lane:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call, lane, w.block_then_exit, (str(tmp_path), "doomed", str(release)))
            await _recorded(tmp_path, "doomed")
            tg.cancel_scope.cancel()
        assert lane.metrics()["process_in_flight"] == 1
        release.touch()
        with anyio.fail_after(15):
            while lane.metrics()["process_in_flight"] != 0:  # noqa: ASYNC110 - polled
                await anyio.sleep(0.01)
        assert lane.metrics()["process_crashed_total"] == 0  # the caller had left
        assert await lane.run(w.add, (1, 2), timeout=None) == 3


async def test_drains_release_once_and_close_releases_the_rest() -> None:
    """A drain whose worker cannot be asked releases at once; aclose releases waiting ones."""
    released: list[str] = []
    drains = Drains()

    class Unreachable:
        async def run(self, *args: object, **kwargs: object) -> dict[str, bool]:
            raise OSError("worker gone")

    class Forever:
        async def run(self, *args: object, **kwargs: object) -> dict[str, bool]:
            return {"tcp://w2": True}

    drains.start(Unreachable(), "k1", "tcp://w1", lambda: released.append("k1"))
    drains.start(Forever(), "k2", "tcp://w2", lambda: released.append("k2"))
    assert drains.busy_workers == {"tcp://w1", "tcp://w2"}
    with anyio.fail_after(5):
        while "k1" not in released:  # noqa: ASYNC110 - the drain runs in its own task
            await anyio.sleep(0.005)
    assert drains.busy_workers == {"tcp://w2"}
    assert len(drains) == 1
    await drains.aclose()
    assert released == ["k1", "k2"]
    assert drains.busy_workers == frozenset()
