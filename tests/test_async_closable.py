"""
One lifecycle base: every class of the package with ``aclose`` derives from
:class:`AsyncClosable`, whose ``async with`` closes it, and no other class writes
its own ``__aexit__`` (a walk over every module, so a new one cannot drift).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import TYPE_CHECKING, Protocol

import anyio
import pytest

import resource_supervisor
from resource_supervisor._lifecycle import AsyncClosable
from resource_supervisor._streams import Broadcaster, Subscription

if TYPE_CHECKING:
    from types import TracebackType

#: Classes with their own ``__aexit__``, and why it is not the base's.
OWN_AEXIT = {
    # closes with the sync close(): exiting never waits, even when cancelled
    "resource_supervisor._streams.Subscription",
    # not closable: one admission slot, released on exit
    "resource_supervisor._admission._limiter._Slot",
}


def package_classes() -> list[type]:
    """Every class defined in a module of the package (all extras are installed here)."""
    found: list[type] = []
    prefix = resource_supervisor.__name__ + "."
    for info in pkgutil.walk_packages(resource_supervisor.__path__, prefix):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_closable_class_uses_the_one_base() -> None:
    """A class with `aclose` (other than a protocol) derives from AsyncClosable."""
    classes = package_classes()
    assert len(classes) > 50
    closable = [
        cls
        for cls in classes
        if hasattr(cls, "aclose") and not (Protocol in cls.__mro__[1:] and cls._is_protocol)  # type: ignore[attr-defined]
    ]
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in closable}
    for expected in ("Supervisor", "ProcessLane", "ThreadLane", "Executors", "DaskLane"):
        assert any(name.endswith("." + expected) for name in names), expected
    strays = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in closable
        if not issubclass(cls, AsyncClosable)
    )
    assert strays == []
    own = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if "__aexit__" in vars(cls) and cls is not AsyncClosable
    )
    assert own == sorted(OWN_AEXIT)


class _Recorder(AsyncClosable):
    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def aclose(self) -> None:
        self.calls.append("aclose")
        if self.fail:
            raise OSError("close failed")

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.calls.append(f"leave:{exc_type.__name__ if exc_type else None}")


async def test_async_with_closes_then_leaves_even_when_close_fails() -> None:
    """Exit runs aclose, then _leave with the block's exception; a failing close still leaves."""
    recorder = _Recorder()
    async with recorder as entered:
        assert entered is recorder
    assert recorder.calls == ["aclose", "leave:None"]

    failing = _Recorder(fail=True)
    with pytest.raises(OSError, match="close failed"):
        async with failing:
            raise KeyError("block")
    assert failing.calls == ["aclose", "leave:KeyError"]


def test_a_subclass_without_aclose_cannot_be_made() -> None:
    """aclose is abstract."""

    class Incomplete(AsyncClosable):
        pass

    with pytest.raises(TypeError, match="aclose"):
        Incomplete()  # type: ignore[abstract]


async def test_real_parts_close_through_the_base() -> None:
    """A broadcaster ends its streams on `async with` exit; a subscription unsubscribes."""
    async with Broadcaster[int]() as broadcaster:
        subscription: Subscription[int] = broadcaster.subscribe(buffer=2)
        async with broadcaster.subscribe(buffer=2):
            assert broadcaster.statistics().subscribers == 2
        assert broadcaster.statistics().subscribers == 1
    with pytest.raises(anyio.EndOfStream):
        await subscription.receive()
