"""
Disarming the process lanes of a service in a child forked from it.

Covers: :func:`guard_lane` (register a lane so that a child forked from the
service forgets it) and the ``os.register_at_fork`` hook that does so. Does not
cover: the lane itself (:mod:`._lane`), its lifeline (:mod:`._lifeline`) or
its forkserver (:mod:`._forkserver`, :mod:`._launcher`).

Why: ``os.fork()`` in the service (a pre-forking server, a library that forks a
helper) copies every descriptor the lane holds. A child holding the write end
of the lane's forkserver "alive" pipe keeps that forkserver running, so the
parent's close, which waits for it, would wait as long as the child lives; a
child holding the lifeline's write end would keep the workers alive after the
service died. So right after a fork, in the child, every lane of the parent
closes its copies of those descriptors, drops its slots without touching the
parent's workers, and refuses calls with a :class:`RuntimeError`: a child must
make its own lane (or supervisor).

The registry is the one piece of process-wide state here, and it has to be:
``os.register_at_fork`` hooks are process-wide. It holds lanes weakly, and the
hook is registered once, on the first lane that starts.
"""

from __future__ import annotations

import os
import weakref
from typing import Final, Protocol

__all__ = ("guard_lane",)


class _Forgettable(Protocol):
    def forget_after_fork(self) -> None: ...


class _Registry:
    __slots__ = ("hooked", "lanes")

    def __init__(self) -> None:
        self.lanes: weakref.WeakSet[_Forgettable] = weakref.WeakSet()
        self.hooked = False


_REGISTRY: Final = _Registry()


def _after_fork_in_child() -> None:
    lanes = list(_REGISTRY.lanes)
    _REGISTRY.lanes.clear()
    for lane in lanes:
        lane.forget_after_fork()


def guard_lane(lane: _Forgettable) -> None:
    """
    Make a child forked from this process forget *lane* (see the module docstring).

    Args:
        lane: The lane; held weakly.
    """
    if not _REGISTRY.hooked:
        _REGISTRY.hooked = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _REGISTRY.lanes.add(lane)
