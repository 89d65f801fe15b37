"""The version gate finds the multiprocessing internals; without them the lane falls back."""

from __future__ import annotations

import logging
import multiprocessing.forkserver
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

from resource_supervisor.broker._local import _worker
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._launcher import SlotLauncher
from resource_supervisor.broker._local._mp_internals import (
    LaneInternals,
    check_internals,
    result_queue_writer,
    worker_process,
)
from resource_supervisor.broker._local._slot import Slot
from tests import _workers
from tests._leaks import child_pids
from tests._settings import lane_settings

pytestmark = pytest.mark.timeout(60)

PRELOAD = ("__main__", _worker.__name__)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="the gate was written against 3.11-3.13")
def test_every_internal_is_found_on_the_tested_versions() -> None:
    """CPython 3.11 to 3.13 have every internal the lane uses; kill_workers() is 3.14+."""
    internals = check_internals()
    assert internals == LaneInternals(
        private_forkserver=True, processes_map=True, result_writer=True, kill_workers=False
    )
    assert internals.describe() == "full"


def test_kill_workers_is_seen_where_the_standard_library_has_it() -> None:
    """The gate reports the public ``kill_workers()`` exactly where it exists."""
    assert check_internals().kill_workers == hasattr(ProcessPoolExecutor, "kill_workers")


def test_a_changed_launch_disables_the_private_forkserver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``Popen._launch`` whose code differs from the one the lane repeats is detected."""

    def _launch(self: object, process_obj: object) -> None:  # pragma: no cover - never called
        raise NotImplementedError(process_obj)

    monkeypatch.setattr(multiprocessing.popen_forkserver.Popen, "_launch", _launch)
    internals = check_internals()
    assert not internals.private_forkserver
    assert "popen_forkserver.Popen._launch differs" in internals.describe()


def _without_executor_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ProcessPoolExecutor look like a version without ``_processes``/``_result_queue``
    (the gate reads the names its ``__init__`` uses; the executor itself is unchanged)."""
    original = ProcessPoolExecutor.__init__

    def __init__(self: ProcessPoolExecutor, *args: object, **kwargs: object) -> None:  # noqa: N807
        original(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(ProcessPoolExecutor, "__init__", __init__)


async def test_forced_fallback_lane_still_works_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """
    With the forkserver internals and the executor internals missing, the lane runs on
    the standard library's forkserver: calls, remote errors and a crash still behave,
    the worker process is still found (through ``active_children()``), the lane logs
    what differs once and its metrics count it; closing reaps the workers (the shared
    standard-library forkserver is the interpreter's, stopped here by the test).
    """
    before = child_pids()
    monkeypatch.delattr(multiprocessing.forkserver.ForkServer, "_stop")
    _without_executor_internals(monkeypatch)
    internals = check_internals()
    assert not internals.private_forkserver
    assert not internals.processes_map
    assert not internals.result_writer
    caplog.set_level(logging.WARNING, logger="resource_supervisor.broker")
    try:
        async with ProcessLane(lane_settings(), max_workers=2) as lane:
            assert await lane.run(_workers.add, (2, 3), timeout=None) == 5
            with pytest.raises(KeyError):
                await lane.run(_workers.raise_key_error, ("k",), timeout=None)
            assert await lane.run(_workers.add, (1, 1), timeout=None) == 2
            assert lane.metrics()["process_lane_fallback_internals"] == 3
        warnings = [r for r in caplog.records if "internals differ" in r.getMessage()]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert "ForkServer._stop missing" in message
        assert "interpreter-wide forkserver" in message
    finally:
        monkeypatch.undo()
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
    assert child_pids() == before


async def test_fallback_finds_the_worker_process_through_active_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``_processes`` the slot's process object still comes back (public
    ``active_children()``), with the real exit code of a killed worker; the result-queue
    writer is left alone."""
    before = child_pids()
    _without_executor_internals(monkeypatch)
    launcher = SlotLauncher("spawn", PRELOAD, threads=1)
    assert not launcher.internals.processes_map
    slot = Slot()
    await launcher.open(slot)
    assert slot.executor is not None
    assert result_queue_writer(slot.executor, launcher.internals) is None
    process = worker_process(slot.executor, slot.pid, launcher.internals)
    assert process is not None
    assert process.pid == slot.pid
    launcher.kill(slot)
    await launcher.shutdown(slot, None)
    assert slot.process is not None
    assert slot.process.exitcode == -9
    await launcher.aclose()
    assert child_pids() == before
