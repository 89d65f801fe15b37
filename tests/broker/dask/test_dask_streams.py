"""Tests of the scheduler plugin that shortens an owned scheduler's worker batch interval."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from resource_supervisor._exceptions import WorkerCrashedError
from resource_supervisor.broker._dask._lane import DaskLane
from resource_supervisor.broker._dask._streams import WORKER_BATCH_SECONDS
from tests import _dask_workers as w
from tests._settings import dask_settings

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


async def _intervals(lane: DaskLane) -> dict[str, float]:
    handle = lane._handle
    assert handle is not None
    client: Any = handle.client
    return dict(await client.run_on_scheduler(w.stream_intervals))


async def test_owned_scheduler_streams_are_shortened_also_for_restarted_workers(
    tmp_path: Path,
) -> None:
    """Every worker stream of an owned scheduler runs at 1 ms, a worker that replaced a
    crashed one included (the stock interval is 5 ms)."""
    settings = dask_settings(poll_interval=0.2)
    async with DaskLane(settings, max_workers=2) as lane:
        before = await _intervals(lane)
        assert len(before) == 2
        assert set(before.values()) == {WORKER_BATCH_SECONDS}
        with pytest.raises(WorkerCrashedError):
            await lane.run(w.record_and_crash, (str(tmp_path), "crasher"), timeout=None)
        with anyio.fail_after(30):
            while True:
                after = await _intervals(lane)
                if len(after) == 2 and set(after) != set(before):
                    break
                await anyio.sleep(0.05)
        assert set(after.values()) == {WORKER_BATCH_SECONDS}
        assert await lane.run(w.add, (1, 2), timeout=None) == 3
