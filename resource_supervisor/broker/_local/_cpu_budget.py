"""
One CPU budget for the process lanes of every server process of a container.

Covers: :class:`CpuBudget`, a fixed set of tokens (``cpu-<i>.token`` files in the
container's shared directory, see :mod:`..._peers`); a process holds one exclusive
``flock`` per lane worker it runs, so the lane workers of all processes together
never exceed the tokens. The kernel releases a dead process's locks, so a token is
never stale. A process that wants a token and finds none leaves a ``want-<pid>``
mark; a process holding more than its fair share (the tokens split evenly among
the live processes) sees it and retires idle workers down to that share, so the
budget is shared by demand without two processes trading workers back and
forth. Also :func:`tokens_wanted`, the pure rule of how many tokens a lane holds.

Does not cover: when the lane starts or retires workers (:mod:`._sizing`,
:mod:`._resizing`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING

from ..._peers import lock_held

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ("CpuBudget", "tokens_wanted")


def tokens_wanted(*, live: int, busy: int, starting: int, queued: int, max_workers: int) -> int:
    """
    Tokens a lane should hold: one per worker it has, and one per queued call that
    no idle worker can take, up to *max_workers*. Pure.
    """
    idle = max(0, live - busy - starting)
    return max(live, min(max_workers, live + max(0, queued - idle)))


class CpuBudget:
    """
    This process's share of the container's CPU tokens.

    Args:
        directory: The container's shared directory (already checked private).
        tokens: Tokens in the whole container (at least 1).
    """

    def __init__(self, directory: Path, tokens: int) -> None:
        if tokens < 1:
            raise ValueError("a CPU budget needs at least one token")
        self.directory = directory
        self.tokens = tokens
        self._held: dict[int, int] = {}  # token index -> fd
        self._want = directory / f"want-{os.getpid()}"
        self._wanting = False

    @property
    def held(self) -> int:
        """Tokens this process holds."""
        return len(self._held)

    def hold(self, wanted: int) -> int:
        """
        Hold up to *wanted* tokens: take free ones (never waiting), give back extra
        ones. Marks this process as wanting while it holds fewer than *wanted*.

        Returns:
            The tokens held now.
        """
        wanted = max(0, min(wanted, self.tokens))
        for index in range(self.tokens):
            if len(self._held) >= wanted:
                break
            if index not in self._held:
                self._try(index)
        while len(self._held) > wanted:
            index = max(self._held)
            os.close(self._held.pop(index))
        self._mark(wanting=len(self._held) < wanted)
        return len(self._held)

    def _try(self, index: int) -> None:
        path = self.directory / f"cpu-{index}.token"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        self._held[index] = fd

    def _mark(self, *, wanting: bool) -> None:
        if wanting == self._wanting:
            return
        if wanting:
            self._want.touch(mode=0o600)
        else:
            with contextlib.suppress(OSError):
                self._want.unlink()
        self._wanting = wanting

    def surplus(self) -> int:
        """
        Tokens this process should give back now: while another live process waits for
        one, what it holds beyond its fair share (the tokens split evenly among the
        live members, at least one each); 0 while nobody waits. Marks of dead
        processes are removed.
        """
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        waiting = False
        members = 0
        for name in names:
            if name.endswith(".lock") and name[: -len(".lock")].isdigit():
                members += lock_held(self.directory / name)
            elif name.startswith("want-") and name != self._want.name:
                pid = name[len("want-") :]
                if pid.isdigit() and lock_held(self.directory / f"{pid}.lock"):
                    waiting = True
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(self.directory / name)
        if not waiting:
            return 0
        fair = max(1, self.tokens // max(1, members))
        return max(0, len(self._held) - fair)

    def close(self) -> None:
        """Give back every token and the want mark. Idempotent."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()
        self._mark(wanting=False)
