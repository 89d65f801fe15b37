"""
GPU pressure: readings for the policy, cache reclaim through PyTorch, batch sizing.

Covers: :func:`gpu_readings` (GPU metrics of a sample -> :class:`._policy.Reading`
per device), :class:`TorchGpuReclaimer` (the built-in cleanup participant that
returns PyTorch's cached CUDA memory to the driver), and the pure sizing helpers
:func:`gpu_batch_size_for` and :func:`parse_device` behind
``optimize_batch_size(..., device="cuda:0")``.

Does not cover: reading NVML (:mod:`._sources._gpu`), grading (:mod:`._policy`),
running cleanup handlers (:mod:`._cleanup`), or host-memory sizing (:mod:`._memory`).
Nothing here imports ``torch`` or ``pynvml``: the reclaimer acts only on a
``torch`` the application has already imported.
"""

from __future__ import annotations

import gc
import math
import re
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

import anyio.to_thread

from ._policy import Reading, Thresholds
from ._snapshot import PressureLevel

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

    from ._cleanup import CleanupRequest
    from ._snapshot import MetricValue
    from ._sources._gpu import GpuSource

__all__ = (
    "GPU_RESERVE_FRACTION",
    "ReclaimOutcome",
    "TorchGpuReclaimer",
    "TorchGpuReclaimerStatistics",
    "freed_bytes",
    "gpu_batch_size_for",
    "gpu_readings",
    "parse_device",
)

_DEVICE = re.compile(r"(?:cuda(?::(?P<n>[0-9]+))?|(?P<bare>[0-9]+))", re.ASCII)

GPU_RESERVE_FRACTION: Final = 0.05
"""Share of device memory kept out of a per-item fit: CUDA context, allocator slack."""

# Share of the base batch size allowed at each level when no per-item size is
# known; the same steps as host sizing (halve at WARNING, quarter at CRITICAL).
_LEVEL_SHARE: Final[Mapping[PressureLevel, float]] = MappingProxyType(
    {PressureLevel.NORMAL: 1.0, PressureLevel.WARNING: 0.5, PressureLevel.CRITICAL: 0.25}
)


def gpu_readings(
    metrics: Mapping[str, MetricValue],
    *,
    warning: float | None,
    critical: float | None,
    hysteresis: float,
) -> list[Reading]:
    """
    One policy reading per visible GPU, from ``gpu{i}_memory_percent``.

    Each reading is ``Reading("gpu", percent, thresholds, device="cuda:{i}")``, so
    :func:`._policy.grade` keeps each device's hysteresis apart and names the
    device in its trigger. A device counted in ``gpu_count`` whose percent is
    missing this sample (its read failed) gets a NaN reading, which keeps its
    level unchanged rather than resetting it. Pure.

    Args:
        metrics: A sample, or a snapshot.
        warning: ``warning_threshold_gpu_memory`` (percent), or ``None``.
        critical: ``aggressive_threshold_gpu_memory`` (percent), or ``None``.
        hysteresis: Points below a threshold before its level is left.

    Returns:
        The readings, ``cuda:0`` first; empty when both thresholds are ``None``
        or no GPU is visible.
    """
    if warning is None and critical is None:
        return []
    count = metrics.get("gpu_count", 0)
    if not isinstance(count, int):
        return []
    thresholds = Thresholds(warning, critical, hysteresis)
    readings = []
    for i in range(count):
        value = metrics.get(f"gpu{i}_memory_percent")
        percent = float(value) if isinstance(value, int | float) else math.nan
        readings.append(Reading("gpu", percent, thresholds, device=f"cuda:{i}"))
    return readings


def parse_device(device: str) -> int:
    """
    The CUDA device index named by *device*: ``"cuda:N"``, ``"cuda"`` (0) or ``"N"``.

    Args:
        device: The device, as torch spells it.

    Returns:
        The index ``N`` (``cuda:N`` in this process).

    Raises:
        ValueError: If *device* is not one of those forms (the message names it).
    """
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise ValueError(f"not a CUDA device: {device!r} (expected 'cuda', 'cuda:N' or 'N')")
    return int(match["n"] or match["bare"] or 0)


def gpu_batch_size_for(
    *,
    base_batch_size: int,
    min_batch_size: int,
    free_bytes: int,
    total_bytes: int,
    level: PressureLevel,
    per_item_bytes: int | None = None,
) -> int:
    """
    The batch size to use on a GPU with *free_bytes* free at pressure *level*. Pure.

    Cases, combined by taking the smallest:

    * the base size, scaled by the level (all at NORMAL, half at WARNING, a
      quarter at CRITICAL);
    * with *per_item_bytes*, as many items as fit in the free memory less a
      reserve of :data:`GPU_RESERVE_FRACTION` of the device.

    The result never leaves ``[min_batch_size, base_batch_size]``.

    Args:
        base_batch_size: The size wanted without pressure (>= 1).
        min_batch_size: The floor (1 <= min <= base).
        free_bytes: Free device memory (>= 0).
        total_bytes: Device memory (> 0).
        level: The pressure level of this device (or the worst level).
        per_item_bytes: Device memory one item needs, when known (> 0).

    Returns:
        The batch size.

    Raises:
        ValueError: If an argument is outside the ranges above.
    """
    if base_batch_size < 1 or not 1 <= min_batch_size <= base_batch_size:
        raise ValueError(
            f"need 1 <= min_batch_size <= base_batch_size, got {min_batch_size}, {base_batch_size}"
        )
    if free_bytes < 0 or total_bytes <= 0:
        raise ValueError(
            f"need free_bytes >= 0 and total_bytes > 0, got {free_bytes}, {total_bytes}"
        )
    if per_item_bytes is not None and per_item_bytes <= 0:
        raise ValueError(f"per_item_bytes must be positive, got {per_item_bytes}")
    size = int(base_batch_size * _LEVEL_SHARE[level])
    if per_item_bytes is not None:
        budget = min(free_bytes, total_bytes) - int(total_bytes * GPU_RESERVE_FRACTION)
        size = min(size, max(0, budget) // per_item_bytes)
    return max(min_batch_size, min(base_batch_size, size))


ReclaimOutcome = Literal["reclaimed", "no_torch", "cuda_not_initialized"]
"""What the last :meth:`TorchGpuReclaimer.cleanup` did."""


@dataclass(frozen=True, slots=True)
class TorchGpuReclaimerStatistics:
    """
    What :meth:`TorchGpuReclaimer.statistics` reports.

    Attributes:
        runs: Cleanups that reclaimed (torch loaded, CUDA initialised).
        skipped: Cleanups that did nothing (no torch, or CUDA never initialised).
        last_outcome: What the last cleanup did, ``None`` before the first.
        last_freed_bytes: Bytes freed per device (``"cuda:N"``) by the last run.
        total_freed_bytes: Sum over every run and device.
    """

    runs: int
    skipped: int
    last_outcome: ReclaimOutcome | None
    last_freed_bytes: Mapping[str, int]
    total_freed_bytes: int


class TorchGpuReclaimer:
    """
    Cleanup participant returning PyTorch's cached CUDA memory to the driver.

    Acts only when the application has imported ``torch`` (``"torch" in
    sys.modules``) and initialised CUDA: it never imports torch, and never
    creates a CUDA context in a process that has none. Then, in a worker thread,
    it runs ``gc.collect()`` (so dropped tensors release their blocks),
    ``torch.cuda.empty_cache()`` and ``torch.cuda.ipc_collect()``. Normal and
    aggressive requests do the same: the cache is either returned or not.

    Freed bytes per device are ``before - after`` readings of *source* (never
    negative): this process's own GPU memory where NVML reports it, otherwise
    the device's used memory (which also moves with other processes); see
    :func:`freed_bytes`.

    Args:
        source: An open :class:`GpuSource` to measure with, shared with the
            sampler (this class never opens or closes it). ``None``, or a source
            that is not open, means nothing is measured.
    """

    def __init__(self, source: GpuSource | None = None) -> None:
        self._source = source
        self._runs = 0
        self._skipped = 0
        self._outcome: ReclaimOutcome | None = None
        self._last: Mapping[str, int] = MappingProxyType({})
        self._total = 0

    async def cleanup(self, request: CleanupRequest) -> None:
        """
        Return cached CUDA memory to the driver, if torch is loaded and using CUDA.

        Args:
            request: The cleanup request (normal and aggressive act alike).

        Cancellation:
            The check for torch happens before any await. Once the thread has
            started, cancellation waits for it to finish (``empty_cache`` cannot
            be interrupted) and then propagates; the freed bytes are not recorded.
        """
        torch = sys.modules.get("torch")
        if torch is None:
            self._skip("no_torch")
            return
        if not _cuda_initialised(torch):
            self._skip("cuda_not_initialized")
            return
        freed = await anyio.to_thread.run_sync(self._reclaim, torch)
        self._runs += 1
        self._outcome = "reclaimed"
        self._last = MappingProxyType(freed)
        self._total += sum(freed.values())

    def _skip(self, outcome: ReclaimOutcome) -> None:
        self._skipped += 1
        self._outcome = outcome
        self._last = MappingProxyType({})

    def _reclaim(self, torch: ModuleType) -> dict[str, int]:
        before = self._source.read() if self._source is not None else {}
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
        after = self._source.read() if self._source is not None else {}
        return freed_bytes(before, after)

    @property
    def last_freed_bytes(self) -> Mapping[str, int]:
        """Bytes freed per device (``"cuda:N"``) by the last cleanup; empty if it skipped."""
        return self._last

    def statistics(self) -> TorchGpuReclaimerStatistics:
        """
        Counters and the last outcome.

        Returns:
            A frozen :class:`TorchGpuReclaimerStatistics`.
        """
        return TorchGpuReclaimerStatistics(
            runs=self._runs,
            skipped=self._skipped,
            last_outcome=self._outcome,
            last_freed_bytes=self._last,
            total_freed_bytes=self._total,
        )


def freed_bytes(
    before: Mapping[str, MetricValue], after: Mapping[str, MetricValue]
) -> dict[str, int]:
    """
    Bytes freed per device between two :meth:`GpuSource.read` results. Pure.

    Uses ``gpu{i}_process_memory_bytes`` where both readings have it and this
    process held memory there before, else ``gpu{i}_memory_used_bytes`` (NVML
    reports 0 for this process inside a container with its own PID namespace,
    which must not read as "nothing freed"). A device missing from either
    reading is left out. Growth counts as 0 freed.

    Args:
        before: The reading before reclaiming.
        after: The reading after.

    Returns:
        ``{"cuda:N": bytes}`` for each device measured in both.
    """
    count = min(int(before.get("gpu_count", 0)), int(after.get("gpu_count", 0)))
    freed: dict[str, int] = {}
    for i in range(count):
        for name in (f"gpu{i}_process_memory_bytes", f"gpu{i}_memory_used_bytes"):
            old, new = before.get(name), after.get(name)
            if isinstance(old, int) and isinstance(new, int) and (old > 0 or "used" in name):
                freed[f"cuda:{i}"] = max(0, old - new)
                break
    return freed


def _cuda_initialised(torch: ModuleType) -> bool:
    """``torch.cuda.is_initialized()``; ``ipc_collect`` would otherwise create a context."""
    cuda = getattr(torch, "cuda", None)
    return cuda is not None and bool(cuda.is_initialized())
