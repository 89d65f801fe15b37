"""
A process that makes real memory stall, run inside a small memory cgroup by
``tests/sources/test_notify_cgroup.py``.

Usage: ``python tests/_page_cache_thrasher.py PATH THREADS``.

Waits for one line on stdin (so that the test can move it into the cgroup first),
then re-reads the file at *PATH*, bigger than the cgroup's limit, from *THREADS*
threads at once, each from its own offset, until it is killed. Every read needs
pages the limit evicted a moment before: each charge reclaims within the cgroup and
each refault of a recently evicted page waits for its I/O, which the kernel counts
as memory stall (PSI ``some``, system-wide too). With several threads one of them is
nearly always stalled, so the stall reaches a large share of the wall time.
"""

from __future__ import annotations

import os
import sys
import threading

CHUNK_BYTES = 1 << 20


def reader(path: str, index: int, threads: int) -> None:
    """Read *path* round and round from this thread's share of it on."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    offset = size * index // threads
    while True:
        data = os.pread(fd, CHUNK_BYTES, offset)
        offset = offset + len(data) if data else 0


def main() -> int:
    """Thrash until killed."""
    path, threads = sys.argv[1], int(sys.argv[2])
    sys.stdin.readline()
    for index in range(1, threads):
        threading.Thread(target=reader, args=(path, index, threads), daemon=True).start()
    reader(path, 0, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
