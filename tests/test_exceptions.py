"""Tests for the error tree: hierarchy, messages, pickling."""

from __future__ import annotations

import pickle

import pytest

from resource_supervisor import _exceptions as ex

INSTANCES = [
    ex.ConfigError("resource_management.x", 3, "bad"),
    ex.NoSupervisorError(),
    ex.SupervisorClosedError("thread lane"),
    ex.WorkerCrashedError("mod.fn", exitcode=3),
    ex.WorkerCrashedError("mod.fn", signal=9),
    ex.WorkerCrashedError("mod.fn"),
    ex.WorkerCrashedError("mod.fn", signal=9, detail="pid 7", reason="oom_kill"),
    ex.ClusterConnectionLostError("mod.fn", detail="scheduler gone"),
    ex.OverloadedError("process", 10, 10, "CRITICAL"),
    ex.AdmissionRejectedError(4, 4, 8, 8, 2.5, True),
    ex.CallTimeoutError("mod.fn", 1.5),
    ex.UnpicklableError("function <lambda>", "cannot pickle"),
]


@pytest.mark.parametrize("error", INSTANCES, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_attributes(error: Exception) -> None:
    """Errors cross the process pool: pickle keeps type, message and attributes."""
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert vars(again) == vars(error)
    assert isinstance(again, ex.ResourceSupervisorError)


def test_builtin_bases() -> None:
    """Programmer errors also read as the builtin they are."""
    assert issubclass(ex.ConfigError, ValueError)
    assert issubclass(ex.NoSupervisorError, RuntimeError)
    assert issubclass(ex.CallTimeoutError, TimeoutError)
    assert issubclass(ex.UnpicklableError, TypeError)
    assert issubclass(ex.ClusterConnectionLostError, ex.WorkerCrashedError)


def test_messages_name_the_facts() -> None:
    """Messages carry the typed attributes callers need."""
    assert "signal 9" in str(ex.WorkerCrashedError("f", signal=9))
    assert "code 3" in str(ex.WorkerCrashedError("f", exitcode=3))
    assert "queue_limit=5" in str(ex.OverloadedError("process", 5, 5, "CRITICAL"))
    assert str(ex.ConfigError("a.b", "x", "why")) == "a.b: invalid value 'x': why"
