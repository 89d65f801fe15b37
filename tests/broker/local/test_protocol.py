"""The wire format between the process lane and its workers, both halves in one module."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor.broker._local._protocol import (
    STOP_FRAME,
    Outcome,
    RemoteTraceback,
    decode_frame,
    encode_batch,
    encode_outcome,
    outcome_frame,
    split_batch,
    split_frames,
)

calls = st.lists(st.tuples(st.integers(0, 2**40), st.binary(max_size=64)), min_size=1, max_size=8)


@given(calls, st.integers(0, 40))
def test_a_batch_comes_apart_as_it_was_put_together(
    batch: list[tuple[int, bytes]], cut: int
) -> None:
    """A batch frame split anywhere is incomplete until its last byte, then comes back whole
    and is removed from the buffer, leaving the next frame's bytes."""
    frame = encode_batch(batch)
    cut = min(cut, len(frame) - 1)
    buffer = bytearray(frame[:cut])
    assert split_batch(buffer) is None
    assert bytes(buffer) == frame[:cut]
    buffer += frame[cut:] + STOP_FRAME
    assert split_batch(buffer) == batch
    assert split_batch(buffer) == []  # the stop frame: no calls
    assert buffer == bytearray()


@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers()), max_size=8), st.integers(0, 30))
def test_outcome_frames_are_split_only_when_complete(
    outcomes: list[tuple[int, int]], cut: int
) -> None:
    """Outcome frames come off the result pipe's bytes in order; a partial frame stays."""
    wire = b"".join(
        outcome_frame(seq, encode_outcome(Outcome.OK, 0.5, value)) for seq, value in outcomes
    )
    tail = outcome_frame(7, encode_outcome(Outcome.OK, 0.0, "tail"))
    cut = min(cut, len(tail) - 1)
    buffer = bytearray(wire + tail[:cut])
    frames = split_frames(buffer)
    assert [(seq, decode_frame(seq, data)[1:]) for seq, data in frames] == [
        (seq, (Outcome.OK, 0.5, value)) for seq, value in outcomes
    ]
    assert bytes(buffer) == tail[:cut]


def test_statuses_travel_as_plain_ints_and_come_back_as_outcomes() -> None:
    """The wire carries the status as an int (no enum class to unpickle in the service);
    decoding gives the :class:`Outcome` member, and an error gets its remote traceback."""
    raw = encode_outcome(Outcome.ERROR, 1.0, (ValueError("boom"), "Traceback: here"))
    assert type(pickle.loads(raw)[0]) is int
    seq, status, seconds, value = decode_frame(3, raw)
    assert (seq, status, seconds) == (3, Outcome.ERROR, 1.0)
    assert isinstance(value, ValueError)
    assert isinstance(value.__cause__, RemoteTraceback)
    assert str(value.__cause__) == "Traceback: here"
    assert decode_frame(4, encode_outcome(Outcome.SKIPPED, 0.0, None))[1] is Outcome.SKIPPED


def test_an_unpicklable_result_and_an_undecodable_frame_become_errors() -> None:
    """A result that cannot be pickled is the call's error, and so is a frame that cannot be
    decoded in the service; neither raises out of the protocol."""
    _, status, _, value = decode_frame(1, encode_outcome(Outcome.OK, 0.0, lambda: None))
    assert status is Outcome.ERROR
    assert isinstance(value, pickle.PicklingError)
    seq, status, _, value = decode_frame(2, b"not a pickle")
    assert (seq, status) == (2, Outcome.ERROR)
    assert isinstance(value, Exception)
