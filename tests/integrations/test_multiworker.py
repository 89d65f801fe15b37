"""
Real multi-worker servers on 127.0.0.1: ``uvicorn --workers 2`` and gunicorn with two
``UvicornWorker`` processes, serving ``tests/_multiworker_app.py`` with multi-process
mode left at ``auto``.

Checked: every scrape of ``/metrics`` shows both server processes (whichever one
answers); the lane workers of both together stay within the container's CPU budget
under concurrent CPU requests; a SIGKILLed server process leaves none of its lane
behind and its series vanish; SIGTERM to the master leaves no process at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
CPUS = 2
PID_LABEL = re.compile(r'resource_supervisor_process_resident_memory_bytes\{[^}]*pid="(\d+)"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "tests._multiworker_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "tests._multiworker_app:app",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]


def _wait(predicate: object, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running(pid: int) -> bool:
    """Whether *pid* still runs (a zombie waiting to be reaped has exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _servers(master: psutil.Process) -> list[psutil.Process]:
    """The master's server processes (not its resource tracker)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in master.children():
            with contextlib.suppress(psutil.Error):
                if "resource_tracker" not in " ".join(child.cmdline()):
                    found.append(child)
    return found


def _lane_workers(master: psutil.Process) -> dict[int, list[int]]:
    """Lane worker pids per server process (children of each one's forkserver)."""
    found: dict[int, list[int]] = {}
    with contextlib.suppress(psutil.Error):
        for server in _servers(master):
            workers: list[int] = []
            with contextlib.suppress(psutil.Error):
                for child in server.children():
                    with contextlib.suppress(psutil.Error):
                        if "forkserver" in " ".join(child.cmdline()):
                            workers.extend(w.pid for w in child.children())
            found[server.pid] = workers
    return found


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real two-process server; every process it started is gone afterwards."""
    if request.param == "gunicorn":
        pytest.importorskip("gunicorn")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        RESOURCE_SUPERVISOR_MULTIPROCESS__DIRECTORY=str(tmp_path / "shared"),
        RESOURCE_SUPERVISOR_MONITORING_INTERVAL="0.2",
        RESOURCE_SUPERVISOR_CONCURRENCY__CONTAINER_CPU_WORKERS=str(CPUS),
        PYTHONPATH=str(ROOT),
    )
    env.pop("COVERAGE_PROCESS_START", None)
    process = subprocess.Popen(
        _command(request.param, port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    everything = psutil.Process(process.pid)
    try:
        yield process, url
    finally:
        tree = []
        with contextlib.suppress(psutil.Error):
            tree = everything.children(recursive=True)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _, alive = psutil.wait_procs(tree, timeout=10)
        for leftover in alive:
            leftover.kill()
        assert process.stderr is not None
        process.stderr.close()
        assert not alive, f"left behind after SIGTERM to the master: {alive}"


def _scraped_pids(url: str) -> set[int]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {int(pid) for pid in PID_LABEL.findall(text)}


def test_a_two_process_server_is_supervised_as_one_container(
    server: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = server
    master = psutil.Process(process.pid)

    def both_up() -> bool:
        servers = {p.pid for p in _servers(master)}
        return len(servers) == 2 and _scraped_pids(url) == servers

    _wait(both_up, 60, "both server processes in /metrics")
    servers = {p.pid for p in _servers(master)}
    # twelve scrapes in a row, whichever process answers, each show both processes
    for _ in range(12):
        assert _scraped_pids(url) == servers
    health = httpx.get(f"{url}/health/resources", timeout=5).json()
    assert sorted(p["pid"] for p in health["container"]["processes"]) == sorted(servers)

    # concurrent CPU requests: the lane workers of both processes stay within the budget
    peak = 0
    answered: set[int] = set()
    with httpx.Client(timeout=60) as client:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(client.get, f"{url}/cpu") for _ in range(12)]
            while not all(f.done() for f in futures):
                peak = max(peak, sum(len(w) for w in _lane_workers(master).values()))
                time.sleep(0.02)
            for future in futures:
                response = future.result()
                assert response.status_code == 200, response.text
                answered.add(response.json()["pid"])
    assert 1 <= peak <= CPUS, peak

    # SIGKILL one server process: its lane goes with it, its series vanish
    lanes = _lane_workers(master)
    victim = max(servers, key=lambda pid: len(lanes.get(pid, [])))
    lane = lanes.get(victim, [])
    assert lane, lanes  # its idle workers are still up (idle_timeout is 60 s)
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: not any(_running(pid) for pid in lane), 3, "the victim's lane to exit")
    _wait(lambda: victim not in _scraped_pids(url), 10, "the victim's series to vanish")
