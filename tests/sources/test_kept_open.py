"""Tests for the kept-open reader base: `with` opens and closes."""

from __future__ import annotations

import pytest

from resource_supervisor._sources._kept_open import KeptOpen
from resource_supervisor._sources._psi import PsiReader


class Recorder(KeptOpen):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def open(self) -> None:
        self.calls.append("open")

    def close(self) -> None:
        self.calls.append("close")


def test_with_block_opens_then_closes_even_on_error() -> None:
    """`with reader:` returns the reader itself, opens it, and closes it when the block raises."""
    reader = Recorder()
    seen: list[list[str]] = []

    def use() -> None:
        with reader as entered:
            assert entered is reader
            seen.append(list(reader.calls))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use()
    assert seen == [["open"]]
    assert reader.calls == ["open", "close"]


def test_base_requires_open_and_close() -> None:
    """The base itself cannot be used: a reader must say what it opens."""
    with pytest.raises(NotImplementedError), KeptOpen():
        pass


def test_real_readers_share_the_shape() -> None:
    """The /proc, cgroup and PSI readers and the sampler are all KeptOpen readers."""
    from resource_supervisor._sampler import Sampler
    from resource_supervisor._sources._cgroup import CgroupMemoryReader
    from resource_supervisor._sources._proc import ProcReader

    for cls in (ProcReader, CgroupMemoryReader, PsiReader, Sampler):
        assert issubclass(cls, KeptOpen)
