"""
NVIDIA GPU memory and utilisation, read through NVML (the ``nvidia-ml-py`` package).

Covers: :class:`GpuSource`, which initialises NVML once, resolves the devices this
process may use (``CUDA_VISIBLE_DEVICES``, handed in by the caller), caches their
handles, and reads them cheaply with a sync :meth:`GpuSource.read`; and the pure
parser :func:`select_visible` for ``CUDA_VISIBLE_DEVICES``.

Does not cover: turning the readings into pressure levels (:mod:`.._gpu`,
:mod:`.._policy`), freeing GPU memory (:class:`.._gpu.TorchGpuReclaimer`), or
deciding whether a read runs on or off the event loop (the sampler does).

Metric names, ``i`` being the device's position among the visible devices (the
``N`` of ``cuda:N`` in the process), not NVML's physical index:

* ``gpu_count``: visible devices (0 without a GPU, a driver or ``nvidia-ml-py``).
* ``gpu_read_failures_total``: device reads that failed since :meth:`GpuSource.open`
  (present only while NVML is open).
* ``gpu{i}_memory_total_bytes``, ``gpu{i}_memory_used_bytes``,
  ``gpu{i}_memory_free_bytes``: device memory, as NVML reports it (every process).
* ``gpu{i}_memory_percent``: used / total, in percent.
* ``gpu{i}_utilization_percent``: percent of the last sample period in which a
  kernel ran (absent where the device does not support the query).
* ``gpu{i}_process_memory_bytes``: memory used by this process's compute contexts
  on the device (0 when it has none; absent where NVML cannot say, for example
  on WDDM drivers). In a container with its own PID namespace NVML reports host
  PIDs, so this process is not found and the value reads 0.

A device whose read fails is left out of that sample (and counted); the others
are still reported.

Known limits: indices in ``CUDA_VISIBLE_DEVICES`` are taken in NVML's order (PCI
bus order), which is CUDA's order when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and on
machines with identical GPUs; ``MIG-`` entries are not resolved (parsing stops
there, as CUDA does with an entry it cannot use).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._snapshot import MetricValue

__all__ = (
    "GpuDevice",
    "GpuSource",
    "GpuSourceStatistics",
    "Nvml",
    "select_visible",
)

logger = logging.getLogger(__name__)

# NVML return codes (nvml.h) meaning "this query will never work on this device";
# the query is then not asked again instead of counting a failure every sample.
_NOT_SUPPORTED: Final = 3
_FUNCTION_NOT_FOUND: Final = 13


class _MemoryInfo(Protocol):
    total: int
    free: int
    used: int


class _Utilization(Protocol):
    gpu: int


class _ProcessInfo(Protocol):
    pid: int
    usedGpuMemory: int | None  # noqa: N815 (NVML's field name)


class Nvml(Protocol):
    """
    The part of the ``pynvml`` module :class:`GpuSource` uses (it, or a stand-in).
    """

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...  # noqa: N802 (NVML's names)
    def nvmlShutdown(self) -> None: ...  # noqa: N802
    def nvmlDeviceGetCount(self) -> int: ...  # noqa: N802
    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...  # noqa: N802
    def nvmlDeviceGetUUID(self, handle: object) -> str: ...  # noqa: N802
    def nvmlDeviceGetName(self, handle: object) -> str: ...  # noqa: N802
    def nvmlDeviceGetMemoryInfo(self, handle: object) -> _MemoryInfo: ...  # noqa: N802
    def nvmlDeviceGetUtilizationRates(self, handle: object) -> _Utilization: ...  # noqa: N802
    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: object
    ) -> Sequence[_ProcessInfo]: ...


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """
    One visible GPU.

    Attributes:
        index: Position among the visible devices (``cuda:<index>`` in this process).
        name: Product name, e.g. ``"NVIDIA H100 80GB HBM3"``.
        uuid: ``"GPU-..."`` identifier, stable across reboots.
        nvml_index: NVML's (physical, PCI-ordered) index of the device.
    """

    index: int
    name: str
    uuid: str
    nvml_index: int


@dataclass(frozen=True, slots=True)
class GpuSourceStatistics:
    """
    What :meth:`GpuSource.statistics` reports.

    Attributes:
        available: NVML is open and at least one device is visible.
        device_count: Visible devices.
        reads: Calls of :meth:`GpuSource.read` while available.
        read_failures: Device reads that failed (each skipped for its sample).
        unavailable_reason: Why the source is not available (no package, no
            driver, no visible device, closed), or ``None``.
    """

    available: bool
    device_count: int
    reads: int
    read_failures: int
    unavailable_reason: str | None


def select_visible(spec: str | None, uuids: Sequence[str]) -> tuple[int, ...]:
    """
    Resolve ``CUDA_VISIBLE_DEVICES`` to NVML indices, in the order the process sees them.

    Follows CUDA: entries are comma-separated; each is a device index or a
    ``GPU-<uuid>`` (a unique prefix is enough); parsing stops at the first entry
    that is invalid, out of range, ambiguous or repeated, keeping the ones before
    it. ``None`` (variable unset) means every device; ``""`` means none.

    Args:
        spec: The variable's value, or ``None`` when unset.
        uuids: The UUID of every device, by NVML index.

    Returns:
        NVML indices of the visible devices, ``cuda:0`` first.
    """
    if spec is None:
        return tuple(range(len(uuids)))
    chosen: list[int] = []
    for raw in spec.split(","):
        entry = raw.strip()
        found: int | None = None
        if entry.isdecimal() and entry.isascii():
            found = int(entry) if int(entry) < len(uuids) else None
        elif entry.startswith("GPU-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            found = matches[0] if len(matches) == 1 else None
        if found is None or found in chosen:
            break
        chosen.append(found)
    return tuple(chosen)


class GpuSource:
    """
    Reads memory and utilisation of the visible NVIDIA GPUs through NVML.

    Without ``nvidia-ml-py``, a driver or a visible device, :meth:`open` returns
    ``False`` (logging why at debug level only) and :meth:`read` returns just
    ``{"gpu_count": 0}``. ``pynvml`` is imported inside :meth:`open`, never at
    import time. All methods are thread-safe: the sampler may read from a worker
    thread while a cleanup participant reads from another.

    Args:
        visible_devices: The value of ``CUDA_VISIBLE_DEVICES`` (``None`` when
            unset: every device). The caller reads the environment, not this class.
        pid: The process whose GPU memory is reported as
            ``gpu{i}_process_memory_bytes``; defaults to this process.
        nvml: The NVML binding; defaults to the ``pynvml`` module.
    """

    def __init__(
        self,
        *,
        visible_devices: str | None = None,
        pid: int | None = None,
        nvml: Nvml | None = None,
    ) -> None:
        self._visible_spec = visible_devices
        self._pid = pid
        self._nvml: Nvml | None = nvml
        self._lock = threading.Lock()
        self._state = "new"  # new -> open | unavailable -> closed
        self._initialised = False
        self._reason: str | None = None
        self._devices: tuple[GpuDevice, ...] = ()
        self._handles: tuple[object, ...] = ()
        self._no_utilization: set[int] = set()
        self._no_processes: set[int] = set()
        self._reads = 0
        self._failures = 0

    def open(self) -> bool:
        """
        Initialise NVML and resolve the visible devices; idempotent.

        The first call does the work and its outcome is kept: later calls return
        it at once. After :meth:`close` the source stays closed (returns ``False``).

        Returns:
            ``True`` when NVML is usable and at least one device is visible.
            Never raises for a missing package, driver or device.
        """
        with self._lock:
            if self._state == "new":
                self._state = "open" if self._open_locked() else "unavailable"
                if self._state == "unavailable":
                    logger.debug("GPU metrics unavailable: %s", self._reason)
            return self._state == "open"

    def _open_locked(self) -> bool:
        nvml = self._nvml
        if nvml is None:
            try:
                # Lazy: importing this module costs nothing unless GPU metrics are wanted.
                import pynvml
            except ImportError as exc:
                self._reason = f"nvidia-ml-py is not installed ({exc})"
                return False
            nvml = self._nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._reason = f"NVML could not be initialised: {exc}"
            return False
        self._initialised = True
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
            chosen = select_visible(self._visible_spec, uuids)
            self._devices = tuple(
                GpuDevice(pos, _text(nvml.nvmlDeviceGetName(handles[i])), uuids[i], i)
                for pos, i in enumerate(chosen)
            )
        except nvml.NVMLError as exc:
            self._reason = f"NVML could not list devices: {exc}"
            self._shutdown_locked()
            return False
        self._handles = tuple(handles[d.nvml_index] for d in self._devices)
        if not self._devices:
            self._reason = (
                f"no visible device ({count} present, CUDA_VISIBLE_DEVICES={self._visible_spec!r})"
            )
            self._shutdown_locked()
            return False
        return True

    def _shutdown_locked(self) -> None:
        if self._initialised and self._nvml is not None:
            self._initialised = False
            self._devices, self._handles = (), ()
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                logger.debug("nvmlShutdown failed: %s", exc)

    def read(self) -> dict[str, MetricValue]:
        """
        Read every visible device once; cheap enough for each sample.

        Returns:
            ``gpu_count`` and, while open, ``gpu_read_failures_total`` and the
            per-device metrics listed in the module docstring. A device whose read
            fails is left out of this sample and counted. Never raises NVML errors.
        """
        with self._lock:
            if self._state != "open":
                return {"gpu_count": 0}
            self._reads += 1
            nvml = self._nvml
            assert nvml is not None
            pid = os.getpid() if self._pid is None else self._pid
            metrics: dict[str, MetricValue] = {"gpu_count": len(self._devices)}
            for device, handle in zip(self._devices, self._handles, strict=True):
                try:
                    metrics.update(self._read_device(nvml, device.index, handle, pid))
                except nvml.NVMLError as exc:
                    self._failures += 1
                    logger.debug("GPU %s read failed: %s", device.uuid, exc)
            metrics["gpu_read_failures_total"] = self._failures
            return metrics

    def _read_device(self, nvml: Nvml, i: int, handle: object, pid: int) -> dict[str, MetricValue]:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        total, used = int(memory.total), int(memory.used)
        out: dict[str, MetricValue] = {
            f"gpu{i}_memory_total_bytes": total,
            f"gpu{i}_memory_used_bytes": used,
            f"gpu{i}_memory_free_bytes": int(memory.free),
        }
        if total > 0:
            out[f"gpu{i}_memory_percent"] = used * 100.0 / total
        if i not in self._no_utilization:
            try:
                out[f"gpu{i}_utilization_percent"] = float(
                    nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                )
            except nvml.NVMLError as exc:
                if not _unsupported(exc):
                    raise
                self._no_utilization.add(i)
        if i not in self._no_processes:
            try:
                processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except nvml.NVMLError as exc:
                if not _unsupported(exc):
                    raise
                self._no_processes.add(i)
            else:
                mine = [p.usedGpuMemory for p in processes if p.pid == pid]
                if None not in mine:
                    out[f"gpu{i}_process_memory_bytes"] = sum(int(m or 0) for m in mine)
        return out

    def devices(self) -> tuple[GpuDevice, ...]:
        """
        The visible devices, in ``cuda:N`` order (empty unless open).

        Returns:
            One :class:`GpuDevice` per visible device.
        """
        with self._lock:
            return self._devices

    def statistics(self) -> GpuSourceStatistics:
        """
        Availability and read counters.

        Returns:
            A frozen :class:`GpuSourceStatistics`.
        """
        with self._lock:
            return GpuSourceStatistics(
                available=self._state == "open",
                device_count=len(self._devices),
                reads=self._reads,
                read_failures=self._failures,
                unavailable_reason=self._reason,
            )

    def close(self) -> None:
        """
        Shut NVML down (once) and forget the handles; idempotent.

        Later :meth:`read` calls return ``{"gpu_count": 0}`` and :meth:`open`
        returns ``False``.
        """
        with self._lock:
            if self._state == "closed":
                return
            self._shutdown_locked()
            self._state = "closed"
            self._reason = "closed"


def _text(value: str | bytes) -> str:
    """NVML strings are ``bytes`` in old bindings, ``str`` in current ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _unsupported(exc: Exception) -> bool:
    return getattr(exc, "value", None) in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND)
