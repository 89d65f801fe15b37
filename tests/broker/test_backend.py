"""Both process-lane backends implement the one seam the Executors facade relies on."""

from __future__ import annotations

import inspect

import pytest

from resource_supervisor._config import ConcurrencySettings
from resource_supervisor.broker._backend import ProcessBackend
from resource_supervisor.broker._local._lane import ProcessLane


def test_local_lane_implements_the_seam() -> None:
    """ProcessLane has every member of ProcessBackend, with matching keyword options."""
    lane = ProcessLane(ConcurrencySettings(), max_workers=1)
    assert isinstance(lane, ProcessBackend)
    assert lane.name == "local"
    run = inspect.signature(ProcessLane.run).parameters
    assert run["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    mapping = inspect.signature(ProcessLane.map).parameters
    for option in ("ordered", "chunksize", "max_in_flight"):
        assert mapping[option].kind is inspect.Parameter.KEYWORD_ONLY


def test_dask_lane_implements_the_seam() -> None:
    """DaskLane has every member of ProcessBackend, so the same calls run on a cluster."""
    pytest.importorskip("distributed")
    from resource_supervisor.broker._dask._lane import DaskLane

    lane = DaskLane(ConcurrencySettings(backend="dask"), max_workers=1)
    assert isinstance(lane, ProcessBackend)
    assert lane.name == "dask"
    for member in ("run", "map"):
        local = inspect.signature(getattr(ProcessLane, member)).parameters
        remote = inspect.signature(getattr(DaskLane, member)).parameters
        assert list(local) == list(remote)
