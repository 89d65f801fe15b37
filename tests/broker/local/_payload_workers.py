"""Worker functions for the payload tests: big results of each kind, and a death mid-frame."""

from __future__ import annotations

import os
import signal


def make_result(kind: str, n: int) -> object:
    """Return a result of *kind* about *n* bytes (or characters) big."""
    if kind == "bytes":
        return bytes(range(256)) * (n // 256)
    if kind == "ascii":
        return "x" * n
    if kind == "latin-1":
        return ("ab\xe9" * (n // 3 + 1))[:n]
    if kind == "ucs2":
        return ("a\u4e2d\ud800" * (n // 3 + 1))[:n]
    if kind == "ucs4":
        return ("a\U0001f600\udc00" * (n // 3 + 1))[:n]
    if kind == "list":
        return [bytes([i % 256]) * 1024 for i in range(n // 1024)]
    if kind == "tuple":
        return tuple(range(n // 8))
    if kind == "dict":
        return {i: str(i) for i in range(n // 16)}
    raise ValueError(kind)


def die_mid_frame(n: int) -> None:
    """
    Start writing a big ``bytes`` outcome frame of *n* bytes on the slot's result pipe,
    write a third of it, then SIGKILL this worker: what a worker killed while sending a
    big result leaves behind.
    """
    _write_a_third(n)
    os.kill(os.getpid(), signal.SIGKILL)


def stall_mid_frame(n: int, directory: str) -> None:
    """Write a third of a big ``bytes`` outcome frame, create ``directory/stalled``, then
    wait (up to 30 s) for ``directory/go``: a worker caught in the middle of a big frame."""
    import time
    from pathlib import Path

    _write_a_third(n)
    Path(directory, "stalled").touch()
    deadline = time.monotonic() + 30
    while not Path(directory, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)  # never finish the frame: the test kills first


def _write_a_third(n: int) -> None:
    from resource_supervisor.broker._local import _protocol, _worker

    channel = _worker._CHANNEL  # the test plays the worker's own part
    assert channel.progress is not None
    seq = channel.progress.value
    head = _protocol.OUTCOME_HEADER.pack(
        _protocol.BIG_HEAD.size + n, seq, _protocol.FrameKind.BYTES
    ) + _protocol.BIG_HEAD.pack(0.0, 0)
    view = memoryview(head + b"\x01" * (n // 3))
    while view:
        view = view[os.write(channel.fd, view) :]


def digest_items(items: list[bytes] | tuple[bytes, ...]) -> tuple[str, int, int]:
    """Return the argument's type name, length and CRC-32 of its joined items."""
    import zlib

    return type(items).__name__, len(items), zlib.crc32(b"".join(items))
