"""
Memory advice and reclaim: batch sizing under pressure, and the memory cleanup participant.

Covers: the pure :func:`batch_size_for` (how big a batch is safe given free memory
and the pressure level) and :class:`MemoryAdvisor`, which applies it to the latest
snapshot and, as a cleanup participant (:meth:`MemoryAdvisor.reclaim`), clears
registered caches, runs the garbage collector and returns freed heap pages to the
operating system with glibc's ``malloc_trim``.

Does not cover: measuring memory (:mod:`._sampler`, :mod:`._sources`), grading
pressure (:mod:`._policy`), running handlers (:mod:`._cleanup`), or GPU memory
(the GPU modules).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._participants import absorb, must_propagate
from ._snapshot import PressureLevel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._cleanup import CleanupRequest
    from ._snapshot import MetricsSnapshot

__all__ = ("MemoryAdvisor", "MemoryStatistics", "batch_size_for")

logger = logging.getLogger("resource_supervisor.memory")

FULL_SPEED_FREE_FRACTION: Final = 0.5
"""At or above this fraction of the limit free, free memory does not shrink batches."""

PER_ITEM_SAFE_FRACTION: Final = 0.5
"""With a known per-item size, a batch may use at most this fraction of free memory."""

_LEVEL_FACTOR: Final = {PressureLevel.NORMAL: 1.0, PressureLevel.WARNING: 0.5}
"""Batch scale per level; CRITICAL has none: it always gets the minimum."""


def batch_size_for(
    *,
    base_batch_size: int,
    min_batch_size: int,
    available_bytes: int,
    limit_bytes: int,
    level: PressureLevel,
    per_item_bytes: int | None = None,
) -> int:
    """
    Return a batch size between *min_batch_size* and *base_batch_size* that fits memory.

    Pure: no I/O. Three caps apply, and the smallest wins (never below the minimum):

    * free memory: full size while at least half the limit is free, then shrinking
      in proportion to the free fraction (a quarter free gives half the base);
    * pressure: WARNING halves the size, CRITICAL gives the minimum;
    * item size (when *per_item_bytes* is known): the batch may take at most half
      of the free memory.

    The result never grows when free memory shrinks or the level rises.

    Args:
        base_batch_size: The size to use when memory is plentiful.
        min_batch_size: The smallest size worth running.
        available_bytes: Free memory under the effective limit.
        limit_bytes: The effective memory limit.
        level: The current pressure level.
        per_item_bytes: Memory one item needs, if known.

    Returns:
        The batch size.

    Raises:
        ValueError: If a size is below 1, *min_batch_size* exceeds
            *base_batch_size*, *available_bytes* is negative or *limit_bytes* is
            below 1; the message names the argument.
    """
    if base_batch_size < 1:
        raise ValueError(f"base_batch_size must be at least 1, got {base_batch_size}")
    if min_batch_size < 1:
        raise ValueError(f"min_batch_size must be at least 1, got {min_batch_size}")
    if min_batch_size > base_batch_size:
        raise ValueError(
            f"min_batch_size ({min_batch_size}) must not exceed base_batch_size ({base_batch_size})"
        )
    if available_bytes < 0:
        raise ValueError(f"available_bytes must not be negative, got {available_bytes}")
    if limit_bytes < 1:
        raise ValueError(f"limit_bytes must be at least 1, got {limit_bytes}")
    if per_item_bytes is not None and per_item_bytes < 1:
        raise ValueError(f"per_item_bytes must be at least 1, got {per_item_bytes}")

    level_factor = _LEVEL_FACTOR.get(level)
    if level_factor is None:  # CRITICAL
        return min_batch_size
    free_fraction = min(1.0, available_bytes / limit_bytes)
    free_factor = min(1.0, free_fraction / FULL_SPEED_FREE_FRACTION)
    size = int(base_batch_size * free_factor * level_factor)
    if per_item_bytes is not None:
        size = min(size, int(available_bytes * PER_ITEM_SAFE_FRACTION) // per_item_bytes)
    return max(min_batch_size, min(base_batch_size, size))


@dataclass(frozen=True, slots=True)
class MemoryStatistics:
    """
    Counters of a :class:`MemoryAdvisor`.

    Attributes:
        reclaims: Completed :meth:`MemoryAdvisor.reclaim` calls.
        caches: Caches registered now.
        caches_cleared: Cache clears that succeeded, over all reclaims.
        cache_failures: Cache clears that raised (logged), over all reclaims.
        malloc_trim_available: Whether glibc ``malloc_trim`` was found.
    """

    reclaims: int
    caches: int
    caches_cleared: int
    cache_failures: int
    malloc_trim_available: bool


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    name: str
    clear: Callable[[CleanupRequest], Awaitable[None] | None]
    aggressive_only: bool


def _load_malloc_trim() -> Callable[[int], int] | None:
    """Return glibc's ``malloc_trim``, or ``None`` off glibc (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - the tests run on Linux
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - musl has no libc.so.6
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryAdvisor:
    """
    Batch-size advice from the latest snapshot, and the built-in memory cleanup participant.

    Register :meth:`reclaim` with the cleanup dispatcher. A normal reclaim clears the
    caches registered without ``aggressive_only``, collects the young garbage
    generations (0 and 1: cheap, and where most garbage is) and trims the heap; an
    aggressive reclaim clears every cache and runs a full collection first.
    """

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        """
        Make an advisor reading snapshots from *snapshot*.

        Args:
            snapshot: Returns the latest snapshot; called on each
                :meth:`optimize_batch_size`. Must be cheap.
        """
        self._snapshot = snapshot
        self._caches: dict[str, _CacheEntry] = {}
        self._reclaims = 0
        self._caches_cleared = 0
        self._cache_failures = 0
        # Looked up on first use, never at import: (found?, function).
        self._malloc_trim: tuple[bool, Callable[[int], int] | None] = (False, None)
        self._trim_limiter: anyio.CapacityLimiter | None = None

    def optimize_batch_size(
        self,
        base_batch_size: int = 64,
        min_batch_size: int = 16,
        per_item_bytes: int | None = None,
    ) -> int:
        """
        Return a batch size suited to the latest snapshot (see :func:`batch_size_for`).

        Args:
            base_batch_size: The size to use when memory is plentiful.
            min_batch_size: The smallest size worth running.
            per_item_bytes: Memory one item needs, if known.

        Returns:
            A size between *min_batch_size* and *base_batch_size*.

        Raises:
            ValueError: If the sizes are invalid (see :func:`batch_size_for`).
        """
        snapshot = self._snapshot()
        return batch_size_for(
            base_batch_size=base_batch_size,
            min_batch_size=min_batch_size,
            available_bytes=snapshot.memory_available_bytes,
            limit_bytes=max(1, snapshot.memory_limit_bytes),
            level=snapshot.pressure_level,
            per_item_bytes=per_item_bytes,
        )

    def register_cache(
        self, cache: object, *, name: str | None = None, aggressive_only: bool = False
    ) -> Callable[[], None]:
        """
        Have :meth:`reclaim` empty *cache*.

        Args:
            cache: An object with a sync ``clear()`` (a ``dict``, an LRU cache), or
                with ``async def cleanup(request)``, which is preferred when both exist.
            name: The name in logs; defaults to the cache's type name.
            aggressive_only: Clear it only in aggressive reclaims (for caches that are
                costly to rebuild).

        Returns:
            A function that unregisters the cache (idempotent).

        Raises:
            TypeError: If *cache* has neither ``cleanup`` nor ``clear``.
            ValueError: If *name* is already registered.
        """
        cleanup = getattr(cache, "cleanup", None)
        clear = getattr(cache, "clear", None)
        call: Callable[[CleanupRequest], Awaitable[None] | None]
        if callable(cleanup):
            call = cleanup
        elif callable(clear):

            def call(request: CleanupRequest, clear: Callable[[], object] = clear) -> None:
                clear()

        else:
            raise TypeError(
                "a cache must have a sync `clear()` method or `async def cleanup(request)`, "
                f"not {type(cache).__name__}"
            )
        if name is None:
            name = type(cache).__name__
        if name in self._caches:
            raise ValueError(
                f"a cache named {name!r} is already registered; pass name= to tell them apart"
            )
        entry = _CacheEntry(name, call, aggressive_only)
        self._caches[name] = entry

        def unregister() -> None:
            if self._caches.get(name) is entry:
                del self._caches[name]

        return unregister

    async def reclaim(self, request: CleanupRequest) -> None:
        """
        Free memory: clear caches, collect garbage, return freed heap to the OS.

        In order: clear the registered caches (all of them when
        ``request.aggressive``, else those not registered ``aggressive_only``); run
        ``gc.collect()`` (all generations when aggressive, generations 0-1
        otherwise); call glibc ``malloc_trim(0)`` in a worker thread, where
        available. A cache that raises is logged and skipped.

        Sync ``clear()`` calls and the collection run on the event loop (they hold
        the GIL either way), after yielding once so that the other handlers of the
        same pass have started; ``malloc_trim`` releases the GIL, so it runs in a
        thread of the advisor's own (one-thread) limiter.

        Args:
            request: The cleanup request; ``aggressive`` selects the depth.

        Cancellation:
            Checked before each cache and before the collection; caches already
            cleared stay cleared. A ``malloc_trim`` already handed to its thread
            runs to completion (it is short) before the cancellation is raised.
        """
        for entry in list(self._caches.values()):
            if entry.aggressive_only and not request.aggressive:
                continue
            await checkpoint_if_cancelled()
            try:
                result = entry.clear(request)
                if result is not None:
                    await result
            except BaseException as exc:
                # a cache's KeyboardInterrupt or own CancelledError is its failure
                if must_propagate(exc):
                    raise
                absorb(exc)
                self._cache_failures += 1
                logger.warning("clearing cache %r failed", entry.name, exc_info=exc)
            else:
                self._caches_cleared += 1
        # A real yield, not just a cancellation check: the other handlers of this
        # pass start (and free what they can) before the collection holds the loop.
        await checkpoint()
        collected = gc.collect() if request.aggressive else gc.collect(1)
        trim = self._get_malloc_trim()
        trimmed = False
        if trim is not None:
            if self._trim_limiter is None:
                self._trim_limiter = anyio.CapacityLimiter(1)
            trimmed = bool(await anyio.to_thread.run_sync(trim, 0, limiter=self._trim_limiter))
        self._reclaims += 1
        logger.debug(
            "reclaim (%s): gc collected %d objects, malloc_trim released memory: %s",
            "aggressive" if request.aggressive else "normal",
            collected,
            trimmed,
        )

    def statistics(self) -> MemoryStatistics:
        """Return the current counters (see :class:`MemoryStatistics`)."""
        return MemoryStatistics(
            reclaims=self._reclaims,
            caches=len(self._caches),
            caches_cleared=self._caches_cleared,
            cache_failures=self._cache_failures,
            malloc_trim_available=self._get_malloc_trim() is not None,
        )

    def _get_malloc_trim(self) -> Callable[[int], int] | None:
        found, trim = self._malloc_trim
        if not found:
            trim = _load_malloc_trim()
            self._malloc_trim = (True, trim)
        return trim
