"""
The shape shared by readers that keep files open between reads.

Covers: :class:`KeptOpen`, a base whose ``with`` block opens and closes the reader.
Does not cover: what is opened or read (see :mod:`._proc`, :mod:`._cgroup`,
:mod:`._psi` and :mod:`.._sampler`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ("KeptOpen",)


class KeptOpen:
    """
    A reader with idempotent ``open()`` and ``close()``; ``with reader:`` calls both.
    """

    def open(self) -> None:
        """Open the kept-open files; idempotent."""
        raise NotImplementedError

    def close(self) -> None:
        """Close every kept-open file; idempotent."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
