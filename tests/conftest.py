"""Shared fixtures and the Hypothesis profile."""

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
from tests._settings import lane_settings, quiet

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
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


# Test modules whose async tests run with blockbuster: a blocking call made on the event
# loop's thread fails the test. Not applied elsewhere yet: the sampler reads /proc and
# cgroup files on the loop on purpose (os.stat, scandir, read of kept-open files, each
# microseconds), and the tests of everything that samples would need those allowed by name.
LOOP_GUARDED_MODULES = frozenset(
    {
        "tests.test_cleanup",
        "tests.test_loop_guard",
        "tests.test_policy",
        "tests.test_sessions",
        "tests.test_streams",
    }
)


@pytest.fixture(autouse=True)
def _loop_never_blocks(request: pytest.FixtureRequest) -> Iterator[None]:
    """In :data:`LOOP_GUARDED_MODULES`, fail an async test whose loop blocks (blockbuster)."""
    if request.module.__name__ not in LOOP_GUARDED_MODULES or not inspect.iscoroutinefunction(
        request.function
    ):
        yield
        return
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx():
        yield
