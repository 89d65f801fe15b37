"""
A process that allocates memory on command, run inside a real memory cgroup by
``tests/sources/test_notify_cgroup.py`` and ``benchmarks/reaction.py``.

Reads one command per stdin line and answers ``ok START END`` on stdout once it is
done (``time.monotonic()`` when the command began and ended; the clock is the same
in every process): ``alloc BYTES`` allocates and touches that many bytes (every page
written, so they are charged to the cgroup) as one block, ``pop N`` drops the last
*N* blocks, ``write BYTES PATH`` writes a file of that size (its page cache is
charged to the cgroup), ``free`` drops everything, ``exit`` ends. The first ``ok`` is printed at
start, before anything is allocated, so that the caller can move the process into
the cgroup first. Run it with ``MALLOC_MMAP_THRESHOLD_`` low so
that freed blocks go back to the kernel at once.
"""

from __future__ import annotations

import sys
import time

PAGE_BYTES = 4096


def main() -> int:
    """Serve commands until ``exit`` or end of input."""
    held: list[bytearray] = []
    sys.stdout.write("ok 0 0\n")
    sys.stdout.flush()
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        start = time.monotonic()
        if command == "alloc":
            size = int(argument)
            block = bytearray(size)
            memoryview(block)[::PAGE_BYTES] = b"\x01" * len(range(0, size, PAGE_BYTES))
            held.append(block)
            del block  # or the last block outlives "free"
        elif command == "write":
            length, _, path = argument.partition(" ")
            with open(path, "wb") as file:
                file.write(b"\x02" * int(length))
        elif command == "pop":
            del held[len(held) - int(argument) :]
        elif command == "free":
            held.clear()
        elif command == "exit":
            break
        sys.stdout.write(f"ok {start!r} {time.monotonic()!r}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
