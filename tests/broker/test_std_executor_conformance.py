"""
CPython's own executor conformance tests (``test.test_concurrent_futures``), run
against ``sup.executors.thread_executor()`` and ``sup.executors.process_executor()``.

The generic test cases (``ExecutorTest``, ``WaitTests``, ``AsCompletedTests``,
``ExecutorShutdownTest``) are subclassed unchanged with a mixin that makes the
executor under test from one supervisor running on an event loop in a background
thread, so ``submit``, ``map``, ``wait``, ``as_completed`` and ``shutdown`` are
driven from a thread other than the loop's, as a library would. Skipped, with the
reason, where the interpreter ships without the ``test`` package (many
distributions strip it; 3.11 builds here do). On 3.11 it is one module, on 3.12+
a package with submodules; both layouts are handled.
"""

from __future__ import annotations

import importlib
import os
import queue
import threading
import unittest
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal

from resource_supervisor import Supervisor
from resource_supervisor._config import build_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import ModuleType

    from resource_supervisor.broker._std_executors import _Bridge


def _load_cases() -> dict[str, Any] | str:
    """The generic test cases by short name, or why they cannot be loaded."""
    try:
        package = importlib.import_module("test.test_concurrent_futures")
    except ImportError as exc:
        return (
            "CPython's test package (test.test_concurrent_futures) is not installed with "
            f"this interpreter ({exc}); the conformance tests need it"
        )
    modules: list[ModuleType] = [package]
    if hasattr(package, "__path__"):  # 3.12+: a package of submodules
        modules = [
            importlib.import_module(f"test.test_concurrent_futures.{name}")
            for name in ("executor", "test_wait", "test_as_completed", "test_shutdown")
        ]
    found: dict[str, Any] = {}
    for module in modules:
        for short, name in (
            ("Executor", "ExecutorTest"),
            ("Wait", "WaitTests"),
            ("AsCompleted", "AsCompletedTests"),
            ("Shutdown", "ExecutorShutdownTest"),
        ):
            if hasattr(module, name):
                found[short] = getattr(module, name)
    return found


CASES = _load_cases()
if isinstance(CASES, str):
    pytest.skip(CASES, allow_module_level=True)

# CPython marks these 'walltime' (they sleep 3 and 6 s); run them with this variable.
WALLTIME = os.environ.get("RS_CONFORMANCE_WALLTIME") == "1"
WALLTIME_TESTS = ("test_map_timeout", "test_first_exception")
# These start `python -c "from concurrent.futures import <executor_type.__name__>"`:
# they test the standard library's classes at interpreter exit, not an executor object.
SUBPROCESS_TESTS = (
    "test_interpreter_shutdown",
    "test_submit_after_interpreter_shutdown",
    "test_hang_gh83386",
)


class _Runner:
    """One supervisor on an event loop in a background thread, for the whole module."""

    def __init__(self) -> None:
        ready: queue.SimpleQueue[BlockingPortal] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        self.portal = ready.get(timeout=30)
        settings = build_settings(
            monitoring_enabled=False,
            concurrency={"default_cpu_workers": 4, "default_io_workers": 8},
        )
        self._cm = self.portal.wrap_async_context_manager(Supervisor(settings))
        self.supervisor = self._cm.__enter__()

    @staticmethod
    def _run(ready: queue.SimpleQueue[BlockingPortal]) -> None:
        async def main() -> None:
            async with BlockingPortal() as portal:
                ready.put(portal)
                await portal.sleep_until_stopped()

        anyio.run(main)

    def close(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self.portal.call(self.portal.stop)
            self._thread.join(timeout=30)


_RUNNER: list[_Runner] = []


@pytest.fixture(autouse=True, scope="module")
def _supervisor() -> Iterator[None]:
    runner = _Runner()
    _RUNNER.append(runner)
    yield
    _RUNNER.clear()
    runner.close()


def _factory(kind: str) -> Callable[..., _Bridge]:
    def make(max_workers: int | None = None) -> _Bridge:
        executors = _RUNNER[0].supervisor.executors
        if kind == "thread":
            return executors.thread_executor(max_workers=max_workers)
        return executors.process_executor(max_workers=max_workers)

    return make


class _LaneMixin:
    """Replaces CPython's ExecutorMixin: the executor comes from the supervisor."""

    worker_count = 5
    executor: Any
    executor_type: Callable[..., Any]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.executor = self.executor_type(max_workers=self.worker_count)

    def tearDown(self) -> None:
        self.executor.shutdown(wait=True)
        self.executor = None
        super().tearDown()  # type: ignore[misc]


def _skipped(reason: str) -> Callable[..., None]:
    @unittest.skip(reason)
    def test(self: object) -> None:  # pragma: no cover - never runs
        del self

    return test


def _build() -> None:
    assert isinstance(CASES, dict)
    for kind in ("thread", "process"):
        for short, case in CASES.items():
            namespace: dict[str, object] = {
                "executor_type": staticmethod(_factory(kind)),
                "__module__": __name__,
                "__doc__": f"CPython's {case.__name__}, for the lane {kind} executor.",
            }
            for name in (n for n in SUBPROCESS_TESTS if hasattr(case, n)):
                namespace[name] = _skipped(
                    "runs the standard library's executor class by name in a subprocess"
                )
            if not WALLTIME:
                for name in (n for n in WALLTIME_TESTS if hasattr(case, n)):
                    namespace[name] = _skipped(
                        "CPython's 'walltime' resource (sleeps 3-6 s); set "
                        "RS_CONFORMANCE_WALLTIME=1 to run it"
                    )
            name = f"TestLane{kind.title()}{short}Conformance"
            globals()[name] = type(name, (_LaneMixin, case, unittest.TestCase), namespace)


_build()
