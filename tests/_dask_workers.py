"""
Worker-side functions for the Dask lane tests: importable by spawned Dask workers.

Executions are counted with files: each call that starts writes one uniquely named
file ``<name>.<uuid>`` into the directory it is given, so a test can count how often
a call ran, even when its worker process died.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def square_or_fail(x: int) -> int:
    """Return ``x * x``; raise KeyError for 13."""
    if x == 13:
        raise KeyError(x)
    return x * x


def raise_key_error(key: str) -> None:
    """Raise ``KeyError(key)``."""
    raise KeyError(key)


def record(directory: str, name: str) -> None:
    """Write one ``<name>.<uuid>`` file into *directory*."""
    (Path(directory) / f"{name}.{uuid.uuid4().hex}").touch()


def count(directory: Path, name: str) -> int:
    """How many times :func:`record` ran for *name* (caller side)."""
    return len(list(directory.glob(f"{name}.*")))


def record_and_crash(directory: str, name: str) -> None:
    """Record the execution, then kill this worker process."""
    record(directory, name)
    os._exit(3)


def record_and_sleep(directory: str, name: str, seconds: float) -> str:
    """Record the execution, sleep, and return *name*."""
    record(directory, name)
    time.sleep(seconds)
    return name


def block_until(directory: str, name: str, release: str, limit: float = 20.0) -> str:
    """
    Record the start, wait until the file *release* exists (hang guard *limit*), then
    record ``<name>-done`` and return *name*.
    """
    record(directory, name)
    deadline = time.monotonic() + limit
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    record(directory, f"{name}-done")
    return name


def grow_memory(step_bytes: int, steps: int, pause: float) -> int:
    """Allocate and touch *step_bytes* per step, *steps* times; return the total held."""
    held = [b"x" * step_bytes]
    for _ in range(steps - 1):
        time.sleep(pause)
        held.append(b"x" * step_bytes)
    return sum(len(block) for block in held)


def stream_intervals(dask_scheduler: Any = None) -> dict[str, float]:
    """Run on the scheduler: the batch interval of its stream to each worker."""
    return {addr: float(stream.interval) for addr, stream in dask_scheduler.stream_comms.items()}


def sleep_and_return(seconds: float) -> float:
    """Sleep *seconds* on the worker and return them."""
    time.sleep(seconds)
    return seconds


def tasks_on_scheduler(dask_scheduler: Any = None) -> int:
    """Run on the scheduler: tasks it has queued or sent to workers and not finished."""
    active = {"queued", "no-worker", "waiting", "processing"}
    return sum(1 for task in dask_scheduler.tasks.values() if task.state in active)


def block_then_exit(directory: str, name: str, release: str, limit: float = 20.0) -> None:
    """Record the start, wait for the file *release* (hang guard *limit*), then die."""
    record(directory, name)
    deadline = time.monotonic() + limit
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(3)


# -- an intruder: probes a cluster's ports from a separate process ---------------------


async def _outcome(attempt: Any, limit: float) -> str:
    """``"ran: <result>"`` if *attempt* succeeds within *limit* seconds, else why not."""
    import asyncio

    try:
        return f"ran: {await asyncio.wait_for(attempt, limit)!r}"
    except TimeoutError:
        return "refused: no answer"
    except Exception as exc:  # noqa: BLE001 - every failure is a refusal, recorded
        return f"refused: {type(exc).__name__}"


def _tls_context(cert_file: str | None) -> Any:
    """A client TLS context that trusts any server: only the server's check can refuse."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        context.load_cert_chain(cert_file)
    return context


async def _pid_via_client(address: str, security: Any = None) -> int:
    """Connect a ``distributed.Client`` and run ``os.getpid`` on the scheduler."""
    from distributed import Client

    client = await Client(  # type: ignore[no-untyped-call]
        address, asynchronous=True, timeout="3s", security=security
    )
    try:
        pid: int = await client.run_on_scheduler(os.getpid)
        return pid
    finally:
        await client.close()


async def _identity(address: str, connection_args: dict[str, Any]) -> str:
    """Ask the server at *address* for its identity over one comm."""
    from distributed.core import rpc

    async with rpc(address, connection_args=connection_args) as remote:  # type: ignore[no-untyped-call]
        identity = await remote.identity()
    return str(identity.get("type"))


def _http_statuses(port: int) -> list[str]:
    """The status of a GET for paths a Dask HTTP server would serve, or why none came."""
    import http.client

    statuses = []
    for path in ("/", "/health", "/metrics", "/json/identity.json", "/info/main/workers.html"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            statuses.append(str(connection.getresponse().status))
        except (OSError, http.client.HTTPException) as exc:
            statuses.append(type(exc).__name__)
        finally:
            connection.close()
    return statuses


async def _probe_port(port: int, foreign_pem: str, own_pem: str | None) -> dict[str, object]:
    """Every way in that an intruder has, against one port."""
    import asyncio

    from distributed.security import Security

    tcp, tls = f"tcp://127.0.0.1:{port}", f"tls://127.0.0.1:{port}"
    plain = {"require_encryption": False}
    attempts = {
        "tcp_client": _pid_via_client(tcp),
        "tcp_rpc": _identity(tcp, plain),
        "tls_client_foreign_cluster": _pid_via_client(
            tls,
            Security.temporary(),  # type: ignore[no-untyped-call]
        ),
        "tls_rpc_no_certificate": _identity(tls, {"ssl_context": _tls_context(None)}),
        "tls_rpc_foreign_certificate": _identity(tls, {"ssl_context": _tls_context(foreign_pem)}),
    }
    if own_pem is not None:  # the control: the cluster's own credentials get in
        attempts["tls_rpc_own_certificate"] = _identity(tls, {"ssl_context": _tls_context(own_pem)})
    # A Dask client talking to an HTTP port waits forever: 3 s without an answer is
    # a refusal too.
    statuses, *outcomes = await asyncio.gather(
        asyncio.to_thread(_http_statuses, port), *(_outcome(a, 3.0) for a in attempts.values())
    )
    return {**dict(zip(attempts, outcomes, strict=True)), "http": statuses}


def intrude(ports: list[int], own_pem: str | None) -> None:
    """
    Probe every port of *ports* on 127.0.0.1 and print one JSON object:
    ``{port: {way in: outcome}}``. *own_pem* (certificate and key of the cluster
    itself) adds a control attempt that must get in.
    """
    import asyncio
    import json
    import tempfile

    from distributed.security import Security

    foreign = Security.temporary()  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory() as directory:
        foreign_pem = str(Path(directory) / "foreign.pem")
        Path(foreign_pem).write_text(foreign.tls_client_cert + foreign.tls_client_key)

        async def main() -> dict[int, dict[str, object]]:
            found = await asyncio.gather(*(_probe_port(p, foreign_pem, own_pem) for p in ports))
            return dict(zip(ports, found, strict=True))

        print(json.dumps(asyncio.run(main())), flush=True)  # noqa: T201 - for the test
    # Clients abandoned mid-handshake would hold up interpreter shutdown for seconds.
    os._exit(0)
