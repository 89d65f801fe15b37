"""
``python examples/demo.py --workers 2``: the RAG service as a multi-worker server.

Serves ``fastapi_rag_service:create_app`` with ``uvicorn --workers N`` on 127.0.0.1
(multi-process mode turns itself on), drives it with ``/ask`` requests (each one an
embedding on a process lane), and prints, once a second, what one scrape of
``/metrics`` shows: every server process with its memory and lane workers, and the
container's figures once. Ends with a summary (scrapes that showed every process,
most lane workers at once against the container's CPU budget) and checks that
SIGTERM to the server leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
SERIES = re.compile(r"^resource_supervisor_(\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def per_process(text: str) -> dict[str, dict[str, float]]:
    """The series of one scrape that carry a ``pid`` label, by pid."""
    found: dict[str, dict[str, float]] = {}
    for name, labels, value in SERIES.findall(text):
        pid = dict(LABEL.findall(labels)).get("pid")
        if pid is not None and value not in {"NaN"}:
            found.setdefault(pid, {})[name] = float(value)
    return found


def _load(url: str, stop: threading.Event, done: list[int]) -> None:
    with httpx.Client(timeout=30) as client:
        n = 0
        while not stop.is_set():
            n += 1
            with contextlib.suppress(httpx.HTTPError):
                response = client.post(
                    f"{url}/ask", json={"conversation_id": f"c{n % 50}", "question": f"q {n}"}
                )
                done.append(response.status_code)


def run_workers(workers: int, duration: float, concurrency: int) -> int:
    """Run the multi-worker demo; return the exit status."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="rs-demo-") as shared:
        env = dict(os.environ)
        env.update(
            RESOURCE_SUPERVISOR_MULTIPROCESS__DIRECTORY=str(Path(shared) / "peers"),
            RESOURCE_SUPERVISOR_MONITORING_INTERVAL="0.5",
        )
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_rag_service:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ]
        print(f"serving with {' '.join(command[2:])}")
        server = subprocess.Popen(command, cwd=HERE, env=env)
        master = psutil.Process(server.pid)
        try:
            return _drive(url, master, workers, duration, concurrency)
        finally:
            tree = []
            with contextlib.suppress(psutil.Error):
                tree = master.children(recursive=True)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            _, alive = psutil.wait_procs(tree, timeout=10)
            print(f"SIGTERM to the server: {len(alive)} process(es) left behind")
            for leftover in alive:
                leftover.kill()


def _drive(
    url: str, master: psutil.Process, workers: int, duration: float, concurrency: int
) -> int:
    deadline = time.monotonic() + 180  # each process embeds its documents at startup
    seen = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            seen = len(per_process(httpx.get(f"{url}/metrics", timeout=5).text))
            if seen >= workers:
                break
        time.sleep(0.2)
    else:
        print(f"only {seen} of {workers} server processes showed up in 180 s", file=sys.stderr)
        return 1
    stop = threading.Event()
    statuses: list[int] = []
    clients = [
        threading.Thread(target=_load, args=(url, stop, statuses)) for _ in range(concurrency)
    ]
    for client in clients:
        client.start()
    scrapes = complete = most_workers = 0
    budget = 0.0
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            processes = per_process(text)
            scrapes += 1
            complete += len(processes) >= workers
            match = re.search(r"^resource_supervisor_container_cpu_tokens (\S+)$", text, re.M)
            budget = float(match.group(1)) if match else budget
            lane = sum(p.get("process_workers_live", 0.0) for p in processes.values())
            most_workers = max(most_workers, int(lane))
            line = "  ".join(
                f"pid {pid}: rss {fig.get('process_resident_memory_bytes', 0) / 2**20:.0f} MiB, "
                f"lane {fig.get('process_workers_live', 0):.0f}, "
                f"done {fig.get('process_completed_total', 0):.0f}"
                for pid, fig in sorted(processes.items())
            )
            print(f"[{len(statuses):5d} answered] {line}  (lane workers {lane:.0f}/{budget:.0f})")
            time.sleep(1.0)
    finally:
        stop.set()
        for client in clients:
            client.join()
    ok = sum(1 for status in statuses if status == 200)
    print(
        f"\n{ok} of {len(statuses)} requests answered 200; {complete} of {scrapes} scrapes "
        f"showed all {workers} processes; at most {most_workers} lane workers at once "
        f"(container budget {budget:.0f})"
    )
    return 0 if complete == scrapes and ok and most_workers <= budget else 1
