"""
The container's shared directory: membership by kernel-released locks, bounded
snapshots, the safety checks, and the pure rules built on it (largest process,
exported families, health).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor import Supervisor, SupervisorSettings
from resource_supervisor._config import MultiprocessSettings
from resource_supervisor._container import Container, container_health
from resource_supervisor._peers import (
    MAX_PEER_BYTES,
    Peer,
    PeerDirectory,
    PeerDirectoryError,
    default_directory,
    largest,
)
from resource_supervisor.integrations.prometheus import peer_families
from tests._loop_guard import blocking_setup

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(30)

MEMBER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from resource_supervisor._peers import PeerDirectory
    d = PeerDirectory(Path(sys.argv[1]), worker=7)
    d.open()
    d.publish({"process_rss_bytes": int(sys.argv[2]), "process_completed_total": 3,
               "memory_used_bytes": 10, "last_metrics_update_ts": 1.0})
    print("ready", flush=True)
    time.sleep(60)
    """
)


@blocking_setup("starts a peer process and reads its ready line")
def _member(directory: Path, rss: int = 5_000_000) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", MEMBER, str(directory), str(rss)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _stop(member: subprocess.Popen[str]) -> None:
    member.kill()
    member.wait()
    if member.stdout is not None:
        member.stdout.close()


def test_a_peer_is_seen_while_alive_and_forgotten_once_sigkilled(tmp_path: Path) -> None:
    """
    A member in another process is listed with its snapshot and worker index; once
    it is SIGKILLed (no hook runs) the kernel releases its lock, the next read drops
    it and removes its files.
    """
    directory = tmp_path / "shared"
    me = PeerDirectory(directory)
    me.open()
    member = _member(directory)
    try:
        me.publish({"process_rss_bytes": 1})
        peers = me.peers()
        assert [(p.pid, p.own) for p in peers] == sorted([(os.getpid(), True), (member.pid, False)])
        other = next(p for p in peers if not p.own)
        assert other.worker == 7
        assert other.snapshot["process_completed_total"] == 3
        member.send_signal(signal.SIGKILL)
        member.wait()
        assert [p.pid for p in me.peers()] == [os.getpid()]
        assert not (directory / f"{member.pid}.lock").exists()
        assert not (directory / f"{member.pid}.json").exists()
    finally:
        _stop(member)
        me.close()
    assert os.listdir(directory) == []


def test_the_directory_is_private_and_refused_when_it_is_not(tmp_path: Path) -> None:
    """Created 0700; a directory open to others, a symlink or a file is refused."""
    directory = tmp_path / "mine"
    PeerDirectory(directory).open()
    assert (directory.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PeerDirectoryError, match="open to other users"):
        PeerDirectory(shared).open()
    link = tmp_path / "link"
    link.symlink_to(directory)
    with pytest.raises(PeerDirectoryError, match="not a directory"):
        PeerDirectory(link).open()
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(PeerDirectoryError, match="belongs to uid"):
            PeerDirectory(foreign).open()


def test_published_snapshots_are_bounded_and_finite(tmp_path: Path) -> None:
    """A huge snapshot is cut to the bound; non-finite values and bools are left out."""
    directory = PeerDirectory(tmp_path / "d")
    directory.open()
    try:
        snapshot: dict[str, object] = {f"provider_key_{i:06d}": i for i in range(50_000)}
        snapshot.update(nan=float("nan"), flag=True, name="x" * 1000)
        directory.publish(snapshot)  # type: ignore[arg-type]
        raw = (tmp_path / "d" / f"{os.getpid()}.json").read_bytes()
        assert len(raw) <= MAX_PEER_BYTES
        body = json.loads(raw)["snapshot"]
        assert "nan" not in body
        assert "flag" not in body
        (own,) = directory.peers()
        assert own.own
        assert 0 < len(own.snapshot) < 50_000
    finally:
        directory.close()


def test_default_directory_is_per_user_and_cgroup() -> None:
    """The default name carries the uid and a key of the cgroup; the same each call."""
    first = default_directory()
    assert first == default_directory()
    assert first.name.startswith(f"resource-supervisor-{os.getuid()}-")


peers_strategy = st.lists(
    st.tuples(st.integers(1, 10_000), st.integers(0, 10**12)),
    min_size=1,
    max_size=8,
    unique_by=lambda pair: pair[0],
)


@given(peers_strategy)
def test_largest_is_the_peer_with_most_memory(pairs: list[tuple[int, int]]) -> None:
    """largest() picks the most memory, the lowest pid on a tie."""
    peers = [Peer(pid, None, {"process_rss_bytes": rss}) for pid, rss in pairs]
    top = largest(peers)
    assert top is not None
    assert top.rss_bytes == max(rss for _, rss in pairs)
    assert top.pid == min(pid for pid, rss in pairs if rss == top.rss_bytes)
    assert largest([]) is None


def _peer(pid: int, completed: int, ts: float, used: int, worker: int | None = None) -> Peer:
    return Peer(
        pid,
        worker,
        {
            "memory_used_bytes": used,
            "memory_limit_source": "cgroup_v1",
            "process_completed_total": completed,
            "process_rss_bytes": 100 * pid,
            "process_lane_backend": "local",
            "last_metrics_update_ts": ts,
            "pressure_level": pid % 3,
        },
    )


def test_peer_families_label_each_process_and_give_container_series_once() -> None:
    """
    Per-process keys appear once per pid (with the worker label); the container's
    memory appears once, from the freshest snapshot.
    """
    families = {f.name: f for f in peer_families([_peer(11, 5, 1.0, 7), _peer(12, 9, 2.0, 8, 1)])}
    completed = families["resource_supervisor_process_completed"]
    assert sorted(
        (s.labels["pid"], s.labels["worker"], s.value)
        for s in completed.samples
        if s.name.endswith("_total")
    ) == [
        ("11", "", 5.0),
        ("12", "1", 9.0),
    ]
    memory = families["resource_supervisor_memory_working_set_bytes"].samples
    assert [(s.labels, s.value) for s in memory] == [({}, 8.0)]  # the freshest, once
    info = families["resource_supervisor_info"].samples
    assert sorted(s.labels.get("pid", "") for s in info) == ["", "11", "12"]


def test_container_health_lists_processes_and_the_highest_level() -> None:
    """The container level is the highest any process sees; every process is listed."""
    body = container_health([_peer(11, 0, 1.0, 0), _peer(13, 0, 1.0, 0)])
    assert body["level"] == "CRITICAL"  # pid 11 sees CRITICAL (11 % 3), pid 13 WARNING
    assert body["largest_pid"] == 13
    processes = body["processes"]
    assert isinstance(processes, list)
    assert [p["pid"] for p in processes] == [11, 13]


@blocking_setup("reads the file its supervisor published")
async def test_a_supervisor_joins_publishes_and_leaves(tmp_path: Path) -> None:
    """
    With multiprocess.enabled, a supervisor joins the directory, publishes every
    snapshot with the container figures, lists a peer from another process, and
    leaves no file behind when it exits.
    """
    directory = tmp_path / "shared"
    settings = SupervisorSettings(
        monitoring_enabled=False,
        multiprocess=MultiprocessSettings(enabled=True, directory=str(directory), worker_index=0),
    )
    member = _member(directory)
    try:
        async with Supervisor(settings) as sup:
            snapshot = await sup.update_metrics()
            assert snapshot["container_processes"] == 2
            assert snapshot["container_largest_pid"] in {os.getpid(), member.pid}
            pids = sorted(p.pid for p in sup.peers())
            assert pids == sorted([os.getpid(), member.pid])
            published = json.loads((directory / f"{os.getpid()}.json").read_text())
            assert published["worker"] == 0
            assert published["snapshot"]["container_processes"] == 2
    finally:
        _stop(member)
    assert not (directory / f"{os.getpid()}.json").exists()
    assert not (directory / f"{os.getpid()}.lock").exists()


def test_multiprocess_mode_off_by_auto_outside_a_server(tmp_path: Path) -> None:
    """auto: a process not started by gunicorn or uvicorn --workers stays alone."""
    container = Container(MultiprocessSettings(directory=str(tmp_path / "d")))
    container.open()
    assert not container.enabled
    assert container.peers() == []
    assert container.cleans(aggressive=False)
    assert not (tmp_path / "d").exists()


async def test_at_warning_only_the_largest_process_cleans_up(tmp_path: Path) -> None:
    """
    A peer holding far more memory is the one to clean up at WARNING: this process
    runs no automatic cleanup then; at CRITICAL every process cleans up.
    """
    from resource_supervisor.testing import ScriptedSource

    directory = tmp_path / "shared"
    settings = SupervisorSettings(
        monitoring_enabled=False,
        cleanup_cooldown=0.0,
        multiprocess=MultiprocessSettings(enabled=True, directory=str(directory)),
    )
    source = ScriptedSource()
    ran: list[bool] = []

    async def handler(request: object) -> None:
        ran.append(bool(getattr(request, "aggressive", False)))

    member = _member(directory, rss=10**13)
    try:
        async with Supervisor(settings, source=source) as sup:
            sup.register_cleanup(handler, name="probe")
            source.set(memory_percent=80.0)
            snapshot = await sup.update_metrics()
            assert snapshot["container_largest_pid"] == member.pid
            assert snapshot["container_is_largest"] == 0
            await sup.update_metrics()
            assert ran == []
            source.set(memory_percent=95.0)
            await sup.update_metrics()
            for _ in range(100):
                if ran:
                    break
                import anyio

                await anyio.sleep(0.02)
            assert ran == [True]
    finally:
        _stop(member)


BESIDE_MULTIPROC = textwrap.dedent(
    """
    import os, sys
    import anyio
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from resource_supervisor import Supervisor, SupervisorSettings
    from resource_supervisor.integrations.prometheus import register

    requests = Counter("app_requests", "Requests the app served.")
    requests.inc(3)

    async def main():
        settings = SupervisorSettings(
            monitoring_enabled=False,
            multiprocess={"enabled": True, "directory": sys.argv[1]},
        )
        async with Supervisor(settings) as sup:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            register(sup, registry)
            sys.stdout.write(generate_latest(registry).decode())

    anyio.run(main)
    """
)


def test_it_works_beside_prometheus_client_multiprocess_mode(tmp_path: Path) -> None:
    """
    In an app using prometheus_client's multiprocess mode, the registry that serves
    it carries both the app's own aggregated counter and every supervised process's
    series (labelled pid).
    """
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    env.pop("COVERAGE_PROCESS_START", None)
    done = subprocess.run(
        [sys.executable, "-c", BESIDE_MULTIPROC, str(tmp_path / "shared")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "app_requests_total 3.0" in done.stdout
    assert re.search(r'resource_supervisor_process_resident_memory_bytes\{pid="\d+"', done.stdout)
