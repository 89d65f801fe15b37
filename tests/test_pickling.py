"""Tests of call pickling: one dumps for good calls, a named culprit for bad ones."""

from __future__ import annotations

import functools
import threading

import pytest

from resource_supervisor._exceptions import UnpicklableError
from resource_supervisor.broker._pickling import (
    check_picklable,
    describe_callable,
    load_call,
    pickle_call,
)
from tests import _workers


def test_round_trip() -> None:
    """pickle_call bytes load back to the same function and arguments."""
    func, args = load_call(pickle_call(_workers.add, (1, 2)))
    assert func is _workers.add
    assert func(*args) == 3  # type: ignore[arg-type]


def test_lambda_is_named_as_the_function() -> None:
    """An unpicklable callable fails with UnpicklableError naming the function."""
    with pytest.raises(UnpicklableError) as info:
        pickle_call(lambda: None, ())
    assert info.value.what.startswith("the function ")
    assert "<lambda>" in info.value.what
    assert info.value.__cause__ is not None
    assert isinstance(info.value, TypeError)


def test_bad_argument_is_named_by_position_and_type() -> None:
    """An unpicklable argument is named by its 1-based position and its type."""
    lock = threading.Lock()
    with pytest.raises(UnpicklableError) as info:
        check_picklable(_workers.add, (1, lock))
    assert info.value.what.startswith("argument 2 (type _thread.lock)")


def test_describe_callable_sees_through_partial() -> None:
    """Names are module.qualname, and partials show the wrapped function."""
    assert describe_callable(_workers.add) == "tests._workers.add"
    assert describe_callable(functools.partial(_workers.add, 1)) == "partial(tests._workers.add)"
    assert describe_callable(object()) == "object"


def test_unpicklable_error_itself_pickles() -> None:
    """The error survives pickling (it may cross a process boundary)."""
    import pickle

    error = UnpicklableError("argument 1 (type x)", "detail")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.what, clone.detail) == ("argument 1 (type x)", "detail")
