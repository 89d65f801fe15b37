"""
The one lifecycle base of everything the library closes with ``aclose``.

Covers: :class:`AsyncClosable`, an abstract base whose ``async with`` closes the
object with its own :meth:`~AsyncClosable.aclose` however the block ends, and a
hook (:meth:`~AsyncClosable._leave`) for the few that must also leave a task group
they entered on entry. Does not cover: what closing means for each part (their
``aclose``).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

__all__ = ("AsyncClosable",)


class AsyncClosable(abc.ABC):
    """
    Closed by ``aclose``; ``async with`` closes it on the way out.

    Subclasses implement :meth:`aclose` (idempotent, always completes) and may
    override ``__aenter__`` to start things. Those that entered a task group on
    entry leave it in :meth:`_leave`, which runs after :meth:`aclose`, even when
    it failed.
    """

    __slots__ = ()

    @abc.abstractmethod
    async def aclose(self) -> None:
        """
        Release everything the object holds. Idempotent.

        Cancellation:
            Each implementation says; the library's always complete.
        """

    async def __aenter__(self) -> Self:
        """
        Return the object itself.

        Cancellation:
            Not a checkpoint.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """
        Close the object (:meth:`aclose`), then leave what entry entered.

        Cancellation:
            As :meth:`aclose`.
        """
        try:
            await self.aclose()
        finally:
            await self._leave(exc_type, exc, tb)

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave the task groups entered in ``__aenter__``; nothing by default."""
        return
