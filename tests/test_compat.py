"""Tests for the synchronous facade with the original names."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import psutil
import pytest

from resource_supervisor import PressureLevel, Supervisor
from resource_supervisor._config import build_settings
from resource_supervisor.compat import ResourceManager

from ._leaks import live_children

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def square(x: int) -> int:
    return x * x


def greet(name: str, *, punctuation: str = ".") -> str:
    return f"hello {name}{punctuation}"


@pytest.fixture
def manager() -> Iterator[ResourceManager]:
    settings = build_settings(
        monitoring_enabled=False,
        concurrency={"default_cpu_workers": 2, "default_io_workers": 2},
    )
    rm = ResourceManager(settings=settings)
    try:
        yield rm
    finally:
        rm.shutdown()


def test_one_instance_from_sync_code(manager: ResourceManager) -> None:
    """ResourceManager() returns the same instance until shut down."""
    assert ResourceManager() is manager
    assert manager.supervisor.level is PressureLevel.NORMAL


def test_original_guide_examples(manager: ResourceManager) -> None:
    """The original guide's calls work nearly verbatim from synchronous code."""
    rm = manager
    metrics = rm.update_metrics()
    assert float(metrics["system_memory_percent"]) > 0
    assert rm.metrics["active_sessions_rag"] == 0
    assert rm.metrics["pressure_level"] == "NORMAL"
    assert float(rm.metrics["last_metrics_update_ts"]) >= float(metrics["last_metrics_update_ts"])

    future = rm.concurrency_manager.run_in_thread_pool(greet, "world", punctuation="!")
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == "hello world!"

    results = list(rm.concurrency_manager.map_tasks_in_process_pool(square, range(200)))
    assert results == [x * x for x in range(200)]

    batch = rm.memory_manager.optimize_batch_size(base_batch_size=64, min_batch_size=16)
    assert 16 <= batch <= 64

    report = rm.request_cleanup(aggressive=False, reason="manual")
    assert report.request.reason == "manual"
    assert {o.name for o in report.outcomes} >= {"memory", "sessions"}

    rm.session_manager.open_session("s1")
    assert rm.update_metrics()["active_sessions_rag"] == 1
    rm.session_manager.close_session("s1")
    assert rm.session_manager.active_sessions == 0


def test_breaking_out_of_map_releases_workers(manager: ResourceManager) -> None:
    """Leaving map_tasks_in_process_pool early stops the map; the lane stays usable."""
    stream = manager.concurrency_manager.map_tasks_in_process_pool(square, range(10**6))
    first = [next(stream) for _ in range(5)]
    stream.close()  # type: ignore[attr-defined]
    assert first == [0, 1, 4, 9, 16]
    assert manager.concurrency_manager.run_in_process_pool(square, 7) == 49


@pytest.mark.timeout(90)
def test_facade_on_the_dask_backend() -> None:
    """
    With ``concurrency.backend: dask`` the facade's process calls and maps run on an
    owned LocalCluster and keep their results and errors; shutdown leaves no process.
    """
    from resource_supervisor import UnpicklableError
    from tests import _dask_workers as dw

    settings = build_settings(
        monitoring_enabled=False,
        concurrency={
            "default_cpu_workers": 2,
            "default_io_workers": 2,
            "backend": "dask",
            "dask": {"n_workers": 2, "memory_limit_bytes": 600 * 1024 * 1024},
        },
    )
    rm = ResourceManager(settings=settings)
    try:
        pool = rm.concurrency_manager
        assert pool.run_in_process_pool(dw.add, 2, 3) == 5
        assert list(pool.map_tasks_in_process_pool(dw.square, range(300))) == [
            x * x for x in range(300)
        ]
        with pytest.raises(KeyError):
            pool.run_in_process_pool(dw.raise_key_error, "missing")
        with pytest.raises(UnpicklableError):
            pool.run_in_process_pool(lambda: 1)
        assert rm.metrics["process_lane_backend"] == "dask"
    finally:
        rm.shutdown()
    assert live_children() == []


def test_shutdown_stops_everything_and_next_call_starts_fresh(manager: ResourceManager) -> None:
    """shutdown() stops the loop thread and workers; a later ResourceManager() is new."""
    manager.concurrency_manager.run_in_process_pool(square, 3)
    manager.shutdown()
    manager.shutdown()  # idempotent
    assert live_children() == []
    again = ResourceManager(settings=build_settings(monitoring_enabled=False))
    try:
        assert again is not manager
    finally:
        again.shutdown()


async def test_from_a_worker_thread_of_a_running_supervisor() -> None:
    """Inside a lane thread of an async supervisor, ResourceManager() drives that supervisor."""
    settings = build_settings(
        monitoring_enabled=False, concurrency={"default_cpu_workers": 1, "default_io_workers": 2}
    )

    def legacy_code() -> tuple[object, object, str]:
        rm = ResourceManager()
        rm.update_metrics()
        fut = rm.concurrency_manager.run_in_thread_pool(greet, "thread")
        return rm.supervisor, rm.metrics["active_sessions_rag"], fut.result(timeout=30)

    async with Supervisor(settings) as sup:
        owner, sessions, greeting = await sup.executors.run_in_thread(legacy_code)
    assert owner is sup
    assert sessions == 0
    assert greeting == "hello thread."


def test_script_using_only_the_facade_exits_by_itself(tmp_path: Path) -> None:
    """A script that only uses the facade exits on its own and leaves no process behind."""
    script = tmp_path / "legacy.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import psutil
            from resource_supervisor.compat import ResourceManager

            def cube(x):
                return x ** 3

            if __name__ == "__main__":
                rm = ResourceManager()
                rm.update_metrics()
                print("mem", rm.metrics["system_memory_percent"] > 0)
                print("map", sum(rm.concurrency_manager.map_tasks_in_process_pool(cube, range(50))))
                print("fut", rm.concurrency_manager.run_in_thread_pool(os.getpid).result())
                kids = [p.pid for p in psutil.Process().children(recursive=True)]
                print("children", len(kids), *kids)
            """
        )
    )
    env = dict(os.environ, RESOURCE_SUPERVISOR_CONCURRENCY__DEFAULT_CPU_WORKERS="2")
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mem True" in proc.stdout
    assert f"map {sum(x**3 for x in range(50))}" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("children"))
    count, *pids = (int(x) for x in line.split()[1:])
    assert count >= 2  # the script did start worker processes
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    # helpers exit when they read EOF from the dead parent: give them a moment
    psutil.wait_procs(procs, timeout=10)
    alive = [pid for pid in pids if psutil.pid_exists(pid) and _running(pid)]
    assert alive == []


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_on_the_running_loops_own_thread_is_a_clear_error() -> None:
    """
    ResourceManager() called on the event loop thread of a running supervisor raises
    a RuntimeError that says what to do, and starts no second supervisor.
    """
    import threading

    settings = build_settings(
        monitoring_enabled=False, concurrency={"default_cpu_workers": 1, "default_io_workers": 2}
    )
    async with Supervisor(settings):
        threads = threading.active_count()
        with pytest.raises(RuntimeError, match="event loop thread") as info:
            ResourceManager()
        assert "run_in_thread" in str(info.value)
        assert threading.active_count() == threads
        assert not any(t.name == "resource-supervisor-loop" for t in threading.enumerate())
