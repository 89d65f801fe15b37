"""The opt-in cloudpickle serializer of the process lane: lambdas and ``__main__`` functions."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from resource_supervisor._exceptions import UnpicklableError
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._pickling import by_value_serializer, pickle_call, prepare_call
from tests import _probe_workers, _workers
from tests._leaks import child_pids
from tests._settings import lane_settings

pytestmark = pytest.mark.timeout(60)


async def test_cloudpickle_sends_lambdas_and_callable_arguments() -> None:
    """With ``serializer: cloudpickle`` a lambda, a closure and a lambda passed as an
    argument run in the worker; module-level functions still work; nothing is left."""
    before = child_pids()
    offset = 10
    async with ProcessLane(lane_settings(serializer="cloudpickle"), max_workers=1) as lane:
        assert await lane.run(lambda x: x * 3, (7,), timeout=None) == 21
        assert await lane.run(lambda: offset + 1, (), timeout=None) == 11
        doubled = await lane.run(_probe_workers.call_with, (lambda v: v * 2, 4), timeout=None)
        assert doubled == 8
        assert await lane.run(_workers.add, (2, 3), timeout=None) == 5
        with pytest.raises(KeyError):
            await lane.run(_workers.raise_key_error, ("k",), timeout=None)
    assert child_pids() == before


async def test_default_pickle_still_refuses_a_lambda_before_any_worker_starts() -> None:
    """The default serializer keeps sending functions by reference: a lambda fails fast."""
    before = child_pids()
    async with ProcessLane(lane_settings(serializer="pickle"), max_workers=1) as lane:
        with pytest.raises(UnpicklableError, match="the function"):
            await lane.run(lambda: 1, (), timeout=None)
        assert child_pids() == before


def test_what_cloudpickle_cannot_send_is_an_unpicklable_error() -> None:
    """A closure over a lock cannot travel by value either: UnpicklableError names it."""
    lock = threading.Lock()
    dumps = by_value_serializer("cloudpickle")
    with pytest.raises(UnpicklableError, match="or a callable argument"):
        prepare_call(lambda: lock.locked(), (), dumps)
    # a non-callable argument is left to the standard pickle, which names it
    func, args = prepare_call(_workers.add, (lock, 1), dumps)
    with pytest.raises(UnpicklableError, match="argument 1"):
        pickle_call(func, args)


def test_missing_cloudpickle_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cloudpickle installed, asking for it raises ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"resource-supervisor\[cloudpickle\]"):
        ProcessLane(lane_settings(serializer="cloudpickle"), max_workers=1)
    assert by_value_serializer("pickle") is None


NOTEBOOK = """
import asyncio
import resource_supervisor as rs


def triple(x):
    return 3 * x


async def main():
    concurrency = rs.ConcurrencySettings(serializer={serializer!r}, default_cpu_workers=1)
    settings = rs.SupervisorSettings(monitoring_enabled=False, concurrency=concurrency)
    async with rs.Supervisor(settings) as sup:
        try:
            print("result", await sup.executors.run_in_process(triple, 5))
        except Exception as exc:
            print("failed", type(exc).__name__)


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("serializer", "expected"),
    [("cloudpickle", "result 15"), ("pickle", "failed AttributeError")],
)
def test_function_defined_in_a_notebook_main_runs_with_cloudpickle(
    serializer: str, expected: str
) -> None:
    """Code run with ``python -c`` has a ``__main__`` no worker can import (as in a
    notebook): its function reaches the worker with cloudpickle; by reference (pickle)
    the worker cannot find it."""
    result = subprocess.run(
        [sys.executable, "-c", NOTEBOOK.format(serializer=serializer)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
