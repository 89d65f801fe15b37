"""
The supervised processes of one container, found through a shared directory.

Covers: :class:`PeerDirectory`, which every supervised process of a container (the
workers of ``gunicorn -w N`` or ``uvicorn --workers N``) opens at start. Each process
holds an exclusive ``flock`` on its own ``<pid>.lock`` file for as long as it lives and
publishes its latest snapshot as ``<pid>.json`` (written to a temporary file and
renamed over the old one: readers never see half a file; no fsync, since the
directory lives in memory). A process is alive exactly while its lock is held: the
kernel releases it when the process ends, however it ends (SIGKILL included), so a
dead process is never mistaken for a live one and its files are removed by the
next reader. Also :func:`default_directory` (per user, keyed by the memory cgroup,
under ``/dev/shm``) and :func:`largest` (the pure choice of the process holding the
most memory).

Security: the directory is created ``0700`` and refused unless it is a real
directory owned by this user with no group or other access, so no other local user
can read the figures or plant a peer.

Does not cover: exporting the peers' series (:mod:`.integrations.prometheus`) or what
the supervisor does with them (:mod:`._supervisor`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._snapshot import MetricValue

__all__ = (
    "MAX_PEER_BYTES",
    "Peer",
    "PeerDirectory",
    "PeerDirectoryError",
    "default_directory",
    "largest",
)

MAX_PEER_BYTES = 256 * 1024
"""A published snapshot larger than this is cut to its first keys; reads beyond it are refused."""


class PeerDirectoryError(OSError):
    """The shared directory is unsafe or unusable; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    """
    One live supervised process of the container, as last published.

    Attributes:
        pid: Its process id.
        worker: The server's worker index when known, else None.
        snapshot: Its latest published snapshot (numbers and short strings).
        own: Whether it is this process.
    """

    pid: int
    worker: int | None
    snapshot: Mapping[str, MetricValue]
    own: bool = False

    @property
    def rss_bytes(self) -> int:
        """Memory of the process and its lane workers (0 when not published)."""
        value = self.snapshot.get("process_rss_bytes", 0)
        workers = self.snapshot.get("process_workers_rss_bytes_sum", 0)
        total = 0
        for part in (value, workers):
            if isinstance(part, int | float) and not isinstance(part, bool):
                total += int(part)
        return total


def largest(peers: Sequence[Peer]) -> Peer | None:
    """The peer holding the most memory (lowest pid on a tie); None for no peers. Pure."""
    if not peers:
        return None
    return min(peers, key=lambda peer: (-peer.rss_bytes, peer.pid))


def lock_held(path: Path) -> bool:
    """
    Whether some process holds an exclusive ``flock`` on *path*: its owner is alive
    (the kernel drops the lock when a process ends, however it ends).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _cgroup_key() -> str:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        text = ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    lines = sorted(
        line for line in text.splitlines() if ":memory:" in line or line.startswith("0::")
    )
    return hashlib.sha256(f"{boot}\n{chr(10).join(lines)}".encode()).hexdigest()[:16]


def default_directory() -> Path:
    """
    The directory the processes of this container share by default:
    ``/dev/shm/resource-supervisor-<uid>-<key>``, where the key is derived from the
    memory cgroup and the boot (``$TMPDIR`` when ``/dev/shm`` is missing).
    """
    base = Path("/dev/shm")
    if not base.is_dir() or not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir())
    return base / f"resource-supervisor-{os.getuid()}-{_cgroup_key()}"


def _checked(directory: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise PeerDirectoryError(f"{directory} is not a directory (a link or a file)")
    if info.st_uid != os.getuid():
        raise PeerDirectoryError(f"{directory} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        raise PeerDirectoryError(
            f"{directory} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            "it must be 0700"
        )


def _encode(snapshot: Mapping[str, MetricValue], worker: int | None) -> bytes:
    body: dict[str, Any] = {}
    size = 64
    for key, value in snapshot.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str):
            value = value[:64]
        elif isinstance(value, bool):
            continue
        size += len(key) + 24
        if size > MAX_PEER_BYTES:
            break
        body[key] = value
    return json.dumps({"worker": worker, "snapshot": body}, separators=(",", ":")).encode()


class PeerDirectory:
    """
    This process's membership of the container's shared directory.

    Args:
        directory: The shared directory (created ``0700`` if missing).
        worker: This process's worker index in its server, when known.

    Raises (from :meth:`open`):
        PeerDirectoryError: If the directory is unsafe (not ours, open to others, a link).
    """

    def __init__(self, directory: Path, *, worker: int | None = None) -> None:
        self.directory = directory
        self.worker = worker
        self.pid = os.getpid()
        self._lock_fd: int | None = None

    @property
    def is_open(self) -> bool:
        """Whether this process is a member now."""
        return self._lock_fd is not None

    def open(self) -> None:
        """Join: hold the lock that says this process is alive."""
        _checked(self.directory)
        pending = self.directory / f"{self.pid}.lock.new"
        fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(pending, self.directory / f"{self.pid}.lock")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                pending.unlink()
            raise
        self._lock_fd = fd

    def publish(self, snapshot: Mapping[str, MetricValue]) -> None:
        """Replace this process's published snapshot (atomic for readers; no fsync)."""
        if self._lock_fd is None:
            return
        target = self.directory / f"{self.pid}.json"
        temporary = self.directory / f".{self.pid}.json.new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _encode(snapshot, self.worker))
        finally:
            os.close(fd)
        os.replace(temporary, target)

    def peers(self) -> list[Peer]:
        """
        Every live member with a published snapshot, this process included; the files
        of members found dead are removed.
        """
        found: list[Peer] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return found
        for name in names:
            if not name.endswith(".lock") or not name[: -len(".lock")].isdigit():
                continue
            pid = int(name[: -len(".lock")])
            own = pid == self.pid and self._lock_fd is not None
            if not own and not self._alive(pid):
                self._remove(pid)
                continue
            peer = self._read(pid, own=own)
            if peer is not None:
                found.append(peer)
        found.sort(key=lambda peer: peer.pid)
        return found

    def _alive(self, pid: int) -> bool:
        return lock_held(self.directory / f"{pid}.lock")

    def _read(self, pid: int, *, own: bool) -> Peer | None:
        try:
            with open(self.directory / f"{pid}.json", "rb") as f:
                raw = f.read(MAX_PEER_BYTES + 1)
        except OSError:
            return None
        if len(raw) > MAX_PEER_BYTES:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("snapshot"), dict):
            return None
        snapshot = {
            str(k): v
            for k, v in data["snapshot"].items()
            if isinstance(v, int | float | str) and not isinstance(v, bool)
        }
        worker = data.get("worker")
        return Peer(pid, worker if isinstance(worker, int) else None, snapshot, own)

    def _remove(self, pid: int) -> None:
        for name in (f"{pid}.json", f"{pid}.lock"):
            with contextlib.suppress(OSError):
                os.unlink(self.directory / name)

    def close(self) -> None:
        """Leave: remove this process's files and release its lock. Idempotent."""
        if self._lock_fd is None:
            return
        self._remove(self.pid)
        os.close(self._lock_fd)
        self._lock_fd = None
