"""
Cancelling and timing out process-lane calls kills only the call that was given up.

A worker runs the calls of a batch one after the other; a cancellation (or an
expired ``timeout=``) seen by the lane after its call finished must not kill the
worker that has moved on to the next call. The first test builds that
interleaving deterministically; the storm test runs thousands of seeded calls
with random deadlines and checks that no call that was not given up failed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import anyio
import pytest

from resource_supervisor._exceptions import CallTimeoutError
from resource_supervisor.broker._local._lane import ProcessLane
from tests import _workers
from tests._settings import lane_settings

pytestmark = pytest.mark.timeout(90)

SEED = 1515


async def _until(condition: object, limit: float = 20.0) -> None:
    """Poll *condition* (hang guard: *limit* seconds)."""
    assert callable(condition)
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - the state lives in other processes
            await anyio.sleep(0.005)


def _block_loop_until(path: Path, limit: float = 20.0) -> None:
    """Hold the event loop (deliberately) until *path* exists, so nothing is read meanwhile."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.002)


async def _batch_of_two(
    lane: ProcessLane, first_gate: Path, second_gate: Path
) -> tuple[asyncio.Task[object], asyncio.Task[object]]:
    """Hand two gated calls to the lane's only worker as one batch; wait until the first runs."""
    await asyncio.gather(*(lane.run(_workers.square, (i,), timeout=None) for i in range(40)))
    (worker,) = lane.statistics().worker_pids
    os.kill(worker, signal.SIGSTOP)  # keeps the slot busy while both calls queue behind it
    try:
        blocker = asyncio.ensure_future(lane.run(_workers.square, (2,), timeout=None))
        await _until(lambda: lane.statistics().workers_busy == 1)
        first = asyncio.ensure_future(
            lane.run(_workers.wait_for_file, (str(first_gate), 1), timeout=None)
        )
        second = asyncio.ensure_future(
            lane.run(_workers.wait_for_file, (str(second_gate), 2), timeout=None)
        )
        await _until(lambda: lane.statistics().queue_depth == 2)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert await blocker == 4  # a short call: the two behind it go as one batch
    await _until(lambda: Path(f"{first_gate}.started").exists())
    return first, second


async def test_cancel_seen_after_its_call_finished_spares_the_next_call_of_the_batch(
    tmp_path: Path,
) -> None:
    """
    The first call of a batch finishes and the worker starts the second; only then is
    the first call's cancellation seen (its outcome not yet read). The worker is not
    killed: the second call returns its result and no worker was replaced.
    """
    first_gate, second_gate = tmp_path / "first", tmp_path / "second"
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        first, second = await _batch_of_two(lane, first_gate, second_gate)
        (worker,) = lane.statistics().worker_pids
        first_gate.write_text("go")
        _block_loop_until(Path(f"{second_gate}.started"))  # first done, second running
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert first.cancelled()
        second_gate.write_text("go")
        with anyio.fail_after(20):
            assert await second == 2
        stats = lane.statistics()
        assert stats.worker_pids == (worker,)
        assert stats.crashed_total == 0
        assert stats.failed_total == 0


async def test_cancel_of_the_running_call_kills_it_and_requeues_the_rest_of_its_batch(
    tmp_path: Path,
) -> None:
    """
    Cancelling the running first call of a batch kills its worker; the second call,
    which never started, runs on a new worker and returns its result.
    """
    first_gate, second_gate = tmp_path / "first", tmp_path / "second"
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        first, second = await _batch_of_two(lane, first_gate, second_gate)
        (worker,) = lane.statistics().worker_pids
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        second_gate.write_text("go")
        with anyio.fail_after(20):
            assert await second == 2
        stats = lane.statistics()
        assert worker not in stats.worker_pids
        assert stats.crashed_total == 0
        started = Path(f"{second_gate}.started").read_text()  # noqa: ASYNC240
        assert int(started) != worker  # the second call never ran on the killed worker


async def test_cancellation_storm_fails_no_call_that_was_not_given_up() -> None:
    """
    Thousands of seeded calls, submitted staggered, each with a random deadline of 0
    to 50 ms (half as ``timeout=``, half as a cancel scope): every call either returns
    its right result or was given up (cancelled or timed out); none fails otherwise.
    """
    rng = random.Random(SEED)
    results = {"ok": 0, "given_up": 0}
    failures: list[BaseException] = []

    async with ProcessLane(lane_settings(), max_workers=2) as lane:
        # both workers up first: the storm is about giving up calls, not cold starts
        await asyncio.gather(*(lane.run(_workers.sleep, (0.2,), timeout=None) for _ in range(2)))

        async def caller(index: int, delay: float, deadline: float, as_timeout: bool) -> None:
            await anyio.sleep(delay)
            long = index % 50 == 0  # a few calls outlast their deadline and get killed
            func, args = (_workers.sleep, (0.06,)) if long else (_workers.square, (index,))
            expected = 0.06 if long else index * index
            try:
                with anyio.move_on_after(None if as_timeout else deadline) as scope:
                    value = await lane.run(func, args, timeout=deadline if as_timeout else None)
                    assert value == expected
                    results["ok"] += 1
                if scope.cancelled_caught:
                    results["given_up"] += 1
            except CallTimeoutError:
                results["given_up"] += 1
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(exc)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for index in range(2000):
                    tg.start_soon(
                        caller,
                        index,
                        rng.uniform(0.0, 1.5),
                        rng.uniform(0.0, 0.05),
                        rng.random() < 0.5,
                    )
        assert failures == []
        assert results["ok"] + results["given_up"] == 2000
        assert results["ok"] > 0
        assert lane.statistics().crashed_total == 0
