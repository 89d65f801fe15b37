"""
The process lane's forkserver socket: who can reach it (the README's Security claim).

CPython's forkserver listens on a Unix socket and forks whatever a client asks for,
without authenticating it on CPython 3.11; only the file's permissions keep other
users out. These tests check those permissions on the real socket of a real lane.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

from resource_supervisor._config import build_settings
from resource_supervisor._supervisor import Supervisor
from resource_supervisor.broker._local._forkserver import short_socket_base
from tests._workers import square

if TYPE_CHECKING:
    from pathlib import Path

NOBODY = 65534


def _connect_as(uid: int, path: str) -> int:
    """Exit status of a forked child that drops to *uid* and connects to *path*:
    3 for permission denied, 0 for connected, 4 for anything else."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child; measured by its exit status
        code = 4
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
            code = 0
        except PermissionError:
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def _forkserver_socket() -> str:
    """The path of the listening socket of this process's lane forkserver."""
    for child in psutil.Process().children(recursive=True):
        with_server = " ".join(child.cmdline())
        if "forkserver" not in with_server:
            continue
        for conn in child.net_connections(kind="unix"):
            laddr: object = conn.laddr  # a path for Unix sockets (typed for inet ones)
            if isinstance(laddr, str) and laddr:
                return laddr
    raise AssertionError("no forkserver socket found")


@pytest.mark.timeout(60)
async def test_forkserver_socket_is_private_to_the_services_user() -> None:
    """The socket is mode 0600 in a 0700 directory under the temp dir, both owned by
    the service's user, and a process of another user cannot connect to it."""
    settings = build_settings(monitoring_enabled=False)
    async with Supervisor(settings) as sup:
        assert await sup.executors.run_in_process(square, 7) == 49
        path = _forkserver_socket()
        directory = os.path.dirname(path)
        sock_stat, dir_stat = os.stat(path), os.stat(directory)
        assert stat.S_ISSOCK(sock_stat.st_mode)
        assert stat.S_IMODE(sock_stat.st_mode) == 0o600
        assert stat.S_IMODE(dir_stat.st_mode) == 0o700
        assert sock_stat.st_uid == dir_stat.st_uid == os.geteuid()
        assert directory.startswith(tempfile.gettempdir())
        if os.geteuid() != 0:
            return  # cannot become another user to try; the modes above decide
        returncode = await anyio.to_thread.run_sync(_connect_as, NOBODY, path)
        assert returncode == 3, "another user could connect to the forkserver"
        # The lane still works: nothing reached the server.
        assert await sup.executors.run_in_process(square, 8) == 64


LONG_TMPDIR_SCRIPT = """
import asyncio, multiprocessing.util, os, sys
import resource_supervisor as rs

def square(x):
    return x * x

async def main():
    concurrency = rs.ConcurrencySettings(start_method="forkserver", default_cpu_workers=1)
    settings = rs.SupervisorSettings(monitoring_enabled=False, concurrency=concurrency)
    async with rs.Supervisor(settings) as sup:
        print("result", await sup.executors.run_in_process(square, 7))
        print("tempdir", multiprocessing.util.get_temp_dir())

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_tmpdir_too_long_for_a_unix_socket_still_starts_workers(tmp_path: Path) -> None:
    """
    With a TMPDIR whose path leaves no room for the forkserver's socket name, the lane
    still starts workers: multiprocessing gets a private 0700 directory in the system
    temporary directory instead, removed when the service exits.
    """
    deep = tmp_path.joinpath(*(["d" * 20] * 5))
    deep.mkdir(parents=True)
    assert short_socket_base(str(deep)) == "/tmp"
    script = tmp_path / "service.py"
    script.write_text(LONG_TMPDIR_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "TMPDIR": str(deep)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["result"] == "49", result.stdout
    used = lines["tempdir"]
    assert os.path.dirname(used) == "/tmp"
    assert not os.path.exists(used)  # removed at exit


def test_a_short_tmpdir_is_kept() -> None:
    """Where the socket fits (any usual TMPDIR), multiprocessing's own choice stands."""
    assert short_socket_base("/tmp") is None
    assert short_socket_base("/" + "x" * 74) is None
    assert short_socket_base("/" + "x" * 75) == "/tmp"
