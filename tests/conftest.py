"""Shared fixtures, the loop guard of every async test and the Hypothesis profile."""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import TYPE_CHECKING, TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings

from resource_supervisor import Supervisor
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._threads import ThreadLane
from tests._loop_guard import LoopGuard, guarded
from tests._settings import lane_settings, quiet

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator, Iterator
    from contextlib import AbstractAsyncContextManager

T = TypeVar("T")

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "100")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")


async def _hosted(resource: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """
    Enter *resource* in a task of its own, yield what it gives, then leave it in that
    task. pytest-asyncio sets a fixture up and tears it down in different tasks, and an
    anyio task group (a supervisor's, a lane's) must be left by the task that entered it.
    """
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    leave = asyncio.Event()

    async def host() -> None:
        async with resource as value:
            entered.set_result(value)
            await leave.wait()

    task = asyncio.create_task(host())
    either = {task, cast("asyncio.Future[None]", entered)}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not entered.done():
        await task  # entering failed: raise its error
    try:
        yield entered.result()
    finally:
        leave.set()
        await task


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    """A running supervisor with :func:`tests._settings.quiet` settings (no sampling)."""
    async for sup in _hosted(Supervisor(quiet())):
        yield sup


@pytest.fixture
async def process_lane() -> AsyncIterator[ProcessLane]:
    """A local process lane of up to two workers, started lazily, closed afterwards."""
    async for lane in _hosted(ProcessLane(lane_settings(), max_workers=2)):
        yield lane


@pytest.fixture
async def thread_lane() -> AsyncIterator[ThreadLane]:
    """A thread lane of two threads, closed afterwards."""
    async for lane in _hosted(ThreadLane(2)):
        yield lane


_GUARD = pytest.StashKey[LoopGuard]()
_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _loop_never_blocks(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Fail an async test whose event loop blocks (see :mod:`tests._loop_guard`): the
    blocking call raises, and a test that passed although such a call was refused
    (the code under test caught the error) fails at teardown with the call's stack.
    """
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    with guarded() as guard:
        request.node.stash[_GUARD] = guard
        yield
    unexpected = guard.unexpected()
    if unexpected and not request.node.stash.get(_CALL_FAILED, False):
        pytest.fail(
            "the code under test caught the loop guard's error:\n"
            + "\n".join(b.describe() for b in unexpected),
            pytrace=False,
        )


@pytest.fixture
def loop_guard(request: pytest.FixtureRequest) -> LoopGuard:
    """The loop guard of this async test, to make a narrow allowance (``allow``)."""
    guard: LoopGuard | None = request.node.stash.get(_GUARD, None)
    if guard is None:
        msg = "loop_guard is for async tests: a sync test is not guarded"
        raise RuntimeError(msg)
    return guard


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note whether the test's call failed, for the guard's teardown check."""
    report = yield
    if call.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report
