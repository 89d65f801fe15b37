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


def test_check_does_not_copy_big_arguments() -> None:
    """The picklability check never builds the pickled bytes: checking a 64 MiB
    argument allocates a small fraction of it (tracemalloc), unlike pickle_call."""
    import tracemalloc

    big = bytes(64 * 2**20)
    tracemalloc.start()
    try:
        check_picklable(_workers.add, (big, 1))
        _, check_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pickle_call(_workers.add, (big, 1))
        _, pickle_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check_peak < 2**20
    assert pickle_peak > len(big)


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


def test_estimate_sees_buffers_containers_and_partials() -> None:
    """The size estimate counts bytes-likes, sampled containers and partial-bound args."""
    from resource_supervisor.broker._pickling import OFFLOAD_BYTES, estimate_call_bytes

    assert estimate_call_bytes(_workers.add, (1, 2)) < 100
    assert estimate_call_bytes(_workers.add, (b"x" * OFFLOAD_BYTES, 1)) > OFFLOAD_BYTES
    assert estimate_call_bytes(_workers.add, (memoryview(bytearray(300_000)),)) >= 300_000
    assert estimate_call_bytes(_workers.add, ([b"y" * 1000] * 1000,)) >= 1_000_000
    assert estimate_call_bytes(_workers.add, (dict.fromkeys(range(5000), "z" * 100),)) >= 500_000
    big = functools.partial(_workers.checksum, bytes(OFFLOAD_BYTES + 1))
    assert estimate_call_bytes(big, ()) > OFFLOAD_BYTES


def test_spilled_call_round_trip() -> None:
    """A spilled call loads back whole (bytes stay bytes), and its file is then removed."""
    import os

    from resource_supervisor.broker._pickling import discard_spill, pickle_call_spilled

    data = os.urandom(3 * 1024 * 1024 + 7)
    payload, path = pickle_call_spilled(_workers.add, (data, bytearray(b"ab" * 40_000), 5))
    assert path is not None
    assert os.path.exists(path)
    assert len(payload) < 4096  # the buffers travel in the file, not in the pickle
    func, args = load_call(payload)
    assert func is _workers.add
    assert args == (data, bytearray(b"ab" * 40_000), 5)
    assert type(args[0]) is bytes
    assert type(args[1]) is bytearray
    assert not os.path.exists(path)
    discard_spill(path)  # a no-op once the worker removed it


def test_spilled_small_call_and_bad_argument() -> None:
    """Nothing big: no file; an unpicklable argument still names its position."""
    from resource_supervisor.broker._pickling import pickle_call_spilled

    payload, path = pickle_call_spilled(_workers.add, (1, 2))
    assert path is None
    assert load_call(payload) == (_workers.add, (1, 2))
    with pytest.raises(UnpicklableError, match="argument 2"):
        pickle_call_spilled(_workers.add, (bytes(100_000), threading.Lock()))
