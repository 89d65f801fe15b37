"""Module-level functions run in worker processes by the process-lane tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def square(x: int) -> int:
    """Return x squared."""
    return x * x


def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


def pid() -> int:
    """Return the worker's pid."""
    return os.getpid()


def raise_key_error(key: str) -> None:
    """Raise KeyError(key) in the worker."""
    raise KeyError(key)


def exit_now(code: int) -> None:
    """End the worker at once with *code*, as a crash would."""
    os._exit(code)


def kill_self() -> None:
    """SIGKILL the worker itself."""
    os.kill(os.getpid(), signal.SIGKILL)


def record(directory: str, name: str, value: int) -> int:
    """Append a line to directory/name (counts executions) and return value."""
    with Path(directory, name).open("a") as f:
        f.write("x\n")
    return value


def wait_for_file(path: str, value: int = 0, limit: float = 30.0) -> int:
    """Write path + '.started', block until *path* exists (hang guard: limit), return value."""
    Path(path + ".tmp").write_text(str(os.getpid()))
    Path(path + ".tmp").replace(path + ".started")  # atomic: readers never see it empty
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return value


def sleep(seconds: float) -> float:
    """Sleep and return seconds."""
    time.sleep(seconds)
    return seconds


def allocate(n_bytes: int) -> int:
    """Grow the worker's RSS by about n_bytes (kept alive) and return its pid."""
    keep = bytearray(n_bytes)
    for i in range(0, n_bytes, 4096):
        keep[i] = 1
    _KEEP.append(keep)
    return os.getpid()


_KEEP: list[bytearray] = []


def big_result(n: int) -> bytes:
    """Return n bytes (above the pipe frame limit for large n)."""
    return b"x" * n


def crash_on(value: int, bad: int) -> int:
    """Return value squared, but end the worker when value == bad."""
    if value == bad:
        os._exit(3)
    return value * value


def sleep_pid(seconds: float) -> int:
    """Sleep, then return the worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def checksum(data: bytes) -> tuple[str, int, int]:
    """Return the argument's type name, length and CRC-32 (to prove it arrived whole)."""
    import zlib

    return type(data).__name__, len(data), zlib.crc32(data)


def square_or_fail(x: int) -> int:
    """Return x squared; raise KeyError for 13."""
    if x == 13:
        raise KeyError(x)
    return x * x


def die_mid_result() -> None:
    """
    Write the start of a big message to the executor's result queue, then SIGKILL
    the worker: what a worker killed while sending back a big result leaves behind.
    """
    import gc
    import multiprocessing.queues
    import struct

    queues = [o for o in gc.get_objects() if isinstance(o, multiprocessing.queues.SimpleQueue)]
    for queue in queues:
        writer = queue._writer  # type: ignore[attr-defined]
        if not writer.closed:
            os.write(writer.fileno(), struct.pack("!i", 1 << 20) + b"\x80\x05partial")
    os.kill(os.getpid(), signal.SIGKILL)


def spin(seconds: float) -> int:
    """Keep the CPU busy in Python for *seconds*, then return the worker's pid."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return os.getpid()


def grow(rate_bytes_per_second: float, limit_bytes: int) -> int:
    """Allocate and touch memory at *rate* until *limit_bytes* are held; return the total."""
    step = 10 * 1024 * 1024
    held: list[bytearray] = []
    total = 0
    while total < limit_bytes:
        chunk = bytearray(step)
        memoryview(chunk)[::4096] = b"\x01" * len(range(0, step, 4096))
        held.append(chunk)
        total += step
        time.sleep(step / rate_bytes_per_second)
    return total


def allocate_and_wait(n_bytes: int, path: str) -> int:
    """Hold *n_bytes* of touched memory until *path* exists (as wait_for_file); return n_bytes."""
    keep = bytearray(n_bytes)
    memoryview(keep)[::4096] = b"\x01" * len(range(0, n_bytes, 4096))
    wait_for_file(path)
    return len(keep)


def oom_score_adj() -> int:
    """Return this worker's oom_score_adj."""
    return int(Path("/proc/self/oom_score_adj").read_text())


def rss_self() -> int:
    """Return this process's resident memory in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def text_digest(text: str) -> tuple[str, int, int]:
    """Return the argument's type name, length and CRC-32 of its UTF-8 (surrogates kept)."""
    import zlib

    return type(text).__name__, len(text), zlib.crc32(text.encode("utf-8", "surrogatepass"))


def big_text(n: int) -> str:
    """Return a str of n characters, some of them outside ASCII."""
    return ("ab\u00e9\u4e2d" * (n // 4 + 1))[:n]
