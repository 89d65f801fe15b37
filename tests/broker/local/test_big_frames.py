"""A big outcome frame read off the loop: across many reads, with bytes past it, or cut short."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from resource_supervisor.broker._local import _fresh_objects
from resource_supervisor.broker._local._big_frames import read_big_frame
from resource_supervisor.broker._local._protocol import (
    OUTCOME_HEADER,
    FrameKind,
    Outcome,
    big_frame,
    encode_outcome,
    outcome_frame,
    outcome_parts,
    split_frames,
)
from tests.broker.local import _payload_workers

pytestmark = pytest.mark.timeout(60)


def _trickle(fd: int, data: bytes, seed: int) -> threading.Thread:
    """Write *data* to *fd* in random pieces of 1 byte to 64 KiB, pausing now and then."""

    def write() -> None:
        rng = random.Random(seed)
        view = memoryview(data)
        while view:
            step = rng.choice((1, 7, 4096, 65536))
            view = view[os.write(fd, view[:step]) :]
            if rng.random() < 0.05:
                time.sleep(0.001)
        os.close(fd)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _read_one(
    wire: bytes, seed: int
) -> tuple[tuple[int, Outcome, float, object] | None, list[tuple[int, bytes]], bool]:
    """Play the loop's part (a first read, small frames split off) and then the thread's:
    return the big frame's outcome, the small frames after it, and whether the pipe ended."""
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    writer_thread = _trickle(writer, wire, seed)
    try:
        buffer = bytearray()
        while big_frame(buffer) is None:
            try:
                buffer += os.read(reader, 65536)
            except BlockingIOError:
                time.sleep(0.001)
            assert split_frames(buffer) == []  # no small frame comes before the big one
        length, seq, kind = big_frame(buffer)  # type: ignore[misc]
        outcome, rest = read_big_frame(
            reader, length, seq, kind, bytes(buffer[OUTCOME_HEADER.size :])
        )
        tail = bytearray(rest)
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 65536):
            tail += chunk
        return outcome, split_frames(tail), not tail
    finally:
        writer_thread.join()
        os.close(reader)


@pytest.mark.parametrize("kind", ["bytes", "ascii", "latin-1", "ucs2", "ucs4", "list", "dict"])
def test_a_big_frame_split_across_many_reads_comes_back_whole(kind: str) -> None:
    """A 1 MiB result, written in pieces from 1 byte up with pauses, is read whole, and the
    small frame written after it is left for the loop, exactly."""
    value = _payload_workers.make_result(kind, 1 << 20)
    wire = b"".join(outcome_parts(5, Outcome.OK, 0.25, value))
    wire += outcome_frame(6, encode_outcome(Outcome.OK, 0.0, "after"))
    outcome, after, _ = _read_one(wire, seed=len(kind))
    assert outcome is not None
    seq, status, seconds, got = outcome
    assert (seq, status, seconds) == (5, Outcome.OK, 0.25)
    assert type(got) is type(value)
    assert got == value
    assert [s for s, _ in after] == [6]


def test_the_frame_kinds_a_worker_chooses() -> None:
    """Raw kinds for big bytes and str, pieces for a long list, a pickle for the rest
    (and for small values, which stay one atomic write)."""

    def kind_of(value: object) -> FrameKind:
        head = outcome_parts(1, Outcome.OK, 0.0, value)[0]
        return FrameKind(OUTCOME_HEADER.unpack_from(head)[2])

    assert kind_of(b"x" * 70_000) is FrameKind.BYTES
    assert kind_of("x" * 70_000) is FrameKind.TEXT
    assert kind_of([b"x" * 100] * 5000) is FrameKind.PIECES
    assert kind_of({i: i for i in range(10_000)}) is FrameKind.PICKLED
    assert kind_of(b"small") is FrameKind.PICKLED
    assert len(outcome_parts(1, Outcome.OK, 0.0, b"small")) == 1


def test_a_frame_cut_short_reads_as_the_end_of_the_pipe() -> None:
    """A worker that dies mid-frame leaves the thread end of file: no outcome, nothing
    left over, and the thread returns."""
    wire = b"".join(outcome_parts(3, Outcome.OK, 0.0, b"y" * (1 << 20)))
    outcome, after, ended = _read_one(wire[: len(wire) // 2], seed=1)
    assert outcome is None
    assert after == []
    assert ended


def test_objects_are_filled_in_place_here() -> None:
    """On CPython the result objects are filled in place (no copy under the GIL)."""
    assert _fresh_objects.available()
    made, view = _fresh_objects.new_bytes(4)
    view[:] = b"abcd"
    view.release()
    assert made == b"abcd"
    assert type(made) is bytes
