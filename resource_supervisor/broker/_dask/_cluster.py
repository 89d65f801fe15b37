"""
Starting, connecting to, probing and closing the Dask cluster behind the Dask lane.

Covers: :func:`open_cluster` (own a ``LocalCluster`` or a subprocess cluster
(:mod:`._subprocess`) on 127.0.0.1, or connect to an existing scheduler by
address or scheduler file, with ``dask.security`` credentials for ``tls://``),
:func:`probe_scheduler` (the scheduler's retry setting and queue depth) and
:func:`close_cluster` (client first, then an owned cluster under a timeout, never
twice). Does not cover: admission, calls and maps (:mod:`._lane`) or grading the
cluster's pressure (:mod:`._pressure`).

Settings the owned scheduler must have, and how they are applied:

* ``allowed_failures`` (``distributed.scheduler.allowed-failures``) = ``dask.retries``:
  passed as a scheduler keyword, so nothing global changes. 0 means a task whose
  worker dies fails at once (``KilledWorker``) and never runs again.
* ``distributed.scheduler.worker-saturation`` = 1.0: read once in the scheduler's
  constructor, so it is set with ``dask.config.set`` only around the cluster's
  creation and nothing stays set afterwards (a subprocess scheduler gets it in its
  environment). With the lane's in-flight cap at the thread count it keeps a queued
  call from sitting behind a running one on a worker that may die.
* Private (``dask.tls``, the default): TLS with credentials made for this cluster
  on every comm port, and HTTP servers without routes (:mod:`._security`).
* No dashboard: the scheduler's HTTP server is bound to a random port on 127.0.0.1
  instead of ``:8787``.

* The client's batch interval: a ``distributed.Client`` holds each message to the
  scheduler until 10 ms after its previous batch (``BatchedSend(interval="10ms")``
  in ``Client._ensure_connected``), so back-to-back calls paid about 10 ms each.
  :func:`open_cluster` lowers it to :data:`CLIENT_BATCH_SECONDS` on the lane's own
  client (a public attribute of an undocumented object: skipped if it is absent;
  a reconnected client gets the stock 10 ms again).
* The scheduler's batch interval to each worker (stock 5 ms): an owned scheduler
  gets the :class:`._streams.WorkerStreamInterval` plugin, which lowers it to
  1 ms for every worker, restarted ones included. Connected schedulers are left as
  their operators configured them.

The owned cluster needs a running asyncio loop (distributed is built on tornado);
trio is refused with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from ..._exceptions import ConfigError

if TYPE_CHECKING:
    from distributed.security import Security

    from ..._config import DaskSettings

__all__ = ("ClusterHandle", "SchedulerFacts", "close_cluster", "open_cluster", "probe_scheduler")

_KEY = "resource_management.concurrency.dask"
CLIENT_BATCH_SECONDS: Final = 0.002
"""
The lane client's batch interval. Measured on a 2-core VM, owned 2-worker cluster:
sequential trivial calls took 10.6 ms each at the stock 10 ms, 6.1 ms at 2 ms and
5.9 ms at 1 ms (DASK_NOTES: 10.57 / 5.61 ms); 2 ms keeps messages batched under load.
"""
_LOG = logging.getLogger("resource_supervisor.broker.dask")


@dataclass(slots=True)
class ClusterHandle:
    """
    The client and, when owned, the cluster of one Dask lane.
    """

    client: object
    """A ``distributed.Client`` in asynchronous mode, not the default client."""
    cluster: object | None
    """The owned ``LocalCluster``/``SpecCluster``, or ``None`` when connected."""
    address: str

    @property
    def owned(self) -> bool:
        """True when the lane started the cluster and must close it."""
        return self.cluster is not None


@dataclass(frozen=True, slots=True)
class SchedulerFacts:
    """
    What the scheduler says about itself; ``None`` fields could not be read.
    """

    allowed_failures: int | None
    queue_depth: int | None


def _require_asyncio() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("the dask process lane needs an asyncio event loop") from None


def _scheduler_address(settings: DaskSettings) -> tuple[str, str] | None:
    """``(address, key)`` when connecting to an existing scheduler, else None."""
    if settings.address is not None:
        return settings.address, f"{_KEY}.address"
    if settings.scheduler_file is not None:
        key = f"{_KEY}.scheduler_file"
        try:
            data = json.loads(Path(settings.scheduler_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(key, settings.scheduler_file, f"cannot read: {exc}") from exc
        address = data.get("address") if isinstance(data, dict) else None
        if not isinstance(address, str):
            raise ConfigError(key, settings.scheduler_file, "has no scheduler address")
        return address, key
    return None


async def _connect(
    address: str, key: str, wait_seconds: float, security: Security | None
) -> ClusterHandle:
    from distributed import Client

    tls = address.startswith("tls://")
    if tls and security is None:
        raise ConfigError(
            key, address, f"a tls:// scheduler needs {_KEY}.security (ca_file, cert_file)"
        )
    if security is not None and not tls:
        raise ConfigError(
            key, address, f"{_KEY}.security is set, so the scheduler must be at a tls:// address"
        )
    try:
        with anyio.fail_after(wait_seconds + 1.0):
            client = await Client(  # type: ignore[no-untyped-call]
                address,
                asynchronous=True,
                set_as_default=False,
                timeout=f"{wait_seconds}s",
                security=security,
            )
    except (OSError, TimeoutError, ValueError) as exc:
        hint = " (or it refused this client's certificate)" if tls else ""
        raise ConfigError(
            key, address, f"no Dask scheduler reachable within {wait_seconds:g} s{hint}: {exc}"
        ) from exc
    _tune_client(client)
    return ClusterHandle(client=client, cluster=None, address=address)


async def _own(settings: DaskSettings, n_workers: int, memory_limit: int | str) -> ClusterHandle:
    import dask
    from distributed import Client, LocalCluster

    from ._security import owned_security, private_config, subprocess_environment

    # an RSA key takes tens of milliseconds of CPU: made off the event loop
    security = await anyio.to_thread.run_sync(owned_security) if settings.tls else None
    if security is None:
        _LOG.warning(
            "the owned Dask cluster listens on plain tcp (dask.tls: false): any local "
            "process can run code on it as this service"
        )
    scheduler_kwargs = {
        "dashboard_address": "127.0.0.1:0",  # the HTTP server binds even without a dashboard
        "allowed_failures": settings.retries,
    }
    cluster: object
    with dask.config.set(private_config()):
        with anyio.fail_after(settings.connect_timeout):
            if settings.scheduler_in_subprocess:
                from ._subprocess import subprocess_cluster

                cluster = await subprocess_cluster(
                    security=security,
                    environment=subprocess_environment(security),
                    scheduler_kwargs=scheduler_kwargs,
                    n_workers=n_workers,
                    memory_limit=memory_limit,
                    silence_logs=logging.ERROR,
                    timeout=settings.connect_timeout,
                )
            else:
                cluster = await LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit=memory_limit,
                    host="127.0.0.1",
                    dashboard_address=None,
                    scheduler_kwargs=scheduler_kwargs,
                    silence_logs=logging.ERROR,
                    security=security,
                    asynchronous=True,
                )
    client = None
    try:
        with anyio.fail_after(settings.connect_timeout):
            client = await Client(  # type: ignore[no-untyped-call]
                cluster, asynchronous=True, set_as_default=False
            )
            # a subprocess cluster returns before its workers have registered
            await client.wait_for_workers(n_workers)
    except BaseException:
        with anyio.CancelScope(shield=True):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            await _close_owned(cluster, settings.close_timeout)
        raise
    _tune_client(client)
    await _tune_scheduler(client)
    return ClusterHandle(client=client, cluster=cluster, address=str(client.scheduler.address))


def _tune_client(client: object) -> None:
    """Shorten the client's batch interval (see :data:`CLIENT_BATCH_SECONDS`)."""
    comm = getattr(client, "scheduler_comm", None)
    if comm is not None and isinstance(getattr(comm, "interval", None), float):
        comm.interval = CLIENT_BATCH_SECONDS


async def _tune_scheduler(client: object) -> None:
    """Shorten an owned scheduler's batch interval to its workers (best effort)."""
    from ._streams import WorkerStreamInterval

    try:
        await client.register_plugin(WorkerStreamInterval())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - only latency depends on it
        _LOG.debug("could not shorten the scheduler's worker batch interval", exc_info=True)


async def open_cluster(
    settings: DaskSettings, *, n_workers: int, memory_limit_bytes: int | None
) -> ClusterHandle:
    """
    Connect to the configured scheduler, or start an owned cluster on 127.0.0.1.

    Args:
        settings: The lane's Dask settings.
        n_workers: Worker processes of an owned cluster (one thread each).
        memory_limit_bytes: Limit per owned worker; ``None`` lets Dask split memory.

    Returns:
        The handle to close with :func:`close_cluster`.

    Raises:
        ConfigError: If the scheduler file cannot be read, no scheduler answers at
            the configured address within ``connect_timeout`` (or it refuses the
            ``dask.security`` credentials), or the address's scheme does not match
            them (``tls://`` needs credentials, credentials need ``tls://``).
        ImportError: If ``cryptography`` (of the ``[dask]`` extra) is missing.
        RuntimeError: If the running event loop is not asyncio.
        TimeoutError: If an owned cluster does not start within ``connect_timeout``.

    Cancellation:
        Checked throughout start-up; a half-started owned cluster is closed, shielded.
    """
    _require_asyncio()
    # the scheduler file and the credentials are files: read off the event loop
    target = await anyio.to_thread.run_sync(_scheduler_address, settings)
    if target is not None:
        from ._security import connect_security

        security = await anyio.to_thread.run_sync(connect_security, settings.security)
        return await _connect(*target, settings.connect_timeout, security)
    limit: int | str = "auto" if memory_limit_bytes is None else memory_limit_bytes
    return await _own(settings, n_workers, limit)


async def probe_scheduler(client: object) -> SchedulerFacts:
    """
    Read the scheduler's ``allowed_failures`` and queue depth with ``run_on_scheduler``.

    An operator may block ``run_function``; then both facts are ``None``.

    Args:
        client: The lane's asynchronous client.

    Returns:
        The facts, ``None`` where unreadable.

    Cancellation:
        Checked at the await; nothing changes on the scheduler.
    """

    def probe(dask_scheduler: object) -> tuple[object, int]:
        # Runs inside the scheduler. A nested function is pickled by value, so the
        # scheduler needs no copy of this library. Reads scheduler internals.
        queued = getattr(dask_scheduler, "queued", ())
        unrunnable = getattr(dask_scheduler, "unrunnable", ())
        return getattr(dask_scheduler, "allowed_failures", None), len(queued) + len(unrunnable)

    try:
        allowed, depth = await client.run_on_scheduler(probe)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - any refusal means "unknown"
        _LOG.debug("cannot probe the Dask scheduler: %r", exc)
        return SchedulerFacts(allowed_failures=None, queue_depth=None)
    return SchedulerFacts(
        allowed_failures=allowed if isinstance(allowed, int) else None,
        queue_depth=int(depth),
    )


async def _close_owned(cluster: object, close_seconds: float) -> None:
    from distributed.core import Status

    try:
        with anyio.fail_after(close_seconds):
            await cluster.close()  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - a known close race; the processes are gone
        # distributed 2026.8 sometimes raises from SpecCluster._update_worker_status
        # (KeyError) or _close (AssertionError) after workers crashed; a second close()
        # would then wait forever on Status.closing, so mark it closed instead.
        _LOG.debug("Dask cluster close raised %r; marking it closed", exc)
        cluster.status = Status.closed  # type: ignore[attr-defined]


async def close_cluster(handle: ClusterHandle, *, close_seconds: float) -> None:
    """
    Close the client, then an owned cluster; a connected scheduler is left running.

    Args:
        handle: What :func:`open_cluster` returned.
        close_seconds: Seconds for each close step before it is abandoned.

    Cancellation:
        Shielded: it always finishes closing.
    """
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(close_seconds):
                await handle.client.close()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - closing must go on to the cluster
            _LOG.debug("Dask client close raised %r", exc)
        if handle.cluster is not None:
            await _close_owned(handle.cluster, close_seconds)
