"""
Tests for the NVML GPU source: absent-driver path, device selection, reads, failures.

Without a GPU the real ``pynvml`` is exercised for the absent-driver path; the
per-device logic runs against :class:`FakeNvml`, a stand-in for the NVML binding
that raises the real ``pynvml`` error classes. Tests marked ``gpu`` use the real
driver and skip without one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._sources._gpu import GpuDevice, GpuSource, select_visible

if TYPE_CHECKING:
    from collections.abc import Iterator

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (the gpu extra) is not installed")

MIB = 1024 * 1024
UUIDS = (
    "GPU-11111111-aaaa-bbbb-cccc-000000000000",
    "GPU-22222222-aaaa-bbbb-cccc-000000000000",
    "GPU-2222ffff-aaaa-bbbb-cccc-000000000000",
)


# -- a stand-in for the NVML binding ---------------------------------------------
@dataclass
class FakeMemory:
    """``nvmlMemory_t`` as pynvml returns it."""

    total: int
    free: int
    used: int


@dataclass
class FakeUtilization:
    """``nvmlUtilization_t``."""

    gpu: int
    memory: int = 0


@dataclass
class FakeProcess:
    """``nvmlProcessInfo_t``."""

    pid: int
    usedGpuMemory: int | None  # noqa: N815 (NVML's field name)


@dataclass
class FakeGpu:
    """One fake device; the ``*error`` fields make a query fail with that NVML code."""

    uuid: str
    name: str = "NVIDIA Fake 80GB"
    total: int = 80 * 1024 * MIB
    used: int = 0
    utilization: int | None = 0  # None: the query is not supported
    processes: list[FakeProcess] = field(default_factory=list)
    error: int | None = None
    utilization_error: int | None = None
    processes_error: int | None = None


class FakeNvml:
    """
    The pynvml functions GpuSource uses, over a list of :class:`FakeGpu`. Counts calls.
    """

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.count_error: int | None = None
        self.shutdown_error: int | None = None
        self.calls: dict[str, int] = {}

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlInit(self) -> None:  # noqa: N802 (NVML's names)
        self._call("init")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._call("shutdown")
        if self.shutdown_error is not None:
            raise pynvml.NVMLError(self.shutdown_error)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._call("count")
        if self.count_error is not None:
            raise pynvml.NVMLError(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:  # noqa: N802
        self._call("handle")
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: object) -> str:  # noqa: N802
        assert isinstance(handle, FakeGpu)
        return handle.uuid

    def nvmlDeviceGetName(self, handle: object) -> str:  # noqa: N802
        assert isinstance(handle, FakeGpu)
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> FakeMemory:  # noqa: N802
        assert isinstance(handle, FakeGpu)
        self._call("memory")
        if handle.error is not None:
            raise pynvml.NVMLError(handle.error)
        return FakeMemory(handle.total, handle.total - handle.used, handle.used)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> FakeUtilization:  # noqa: N802
        assert isinstance(handle, FakeGpu)
        self._call("utilization")
        if handle.utilization_error is not None:
            raise pynvml.NVMLError(handle.utilization_error)
        if handle.utilization is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return FakeUtilization(handle.utilization)

    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: object
    ) -> list[FakeProcess]:
        assert isinstance(handle, FakeGpu)
        self._call("processes")
        if handle.processes_error is not None:
            raise pynvml.NVMLError(handle.processes_error)
        return list(handle.processes)


def fake_source(gpus: list[FakeGpu], **kwargs: str | None) -> tuple[GpuSource, FakeNvml]:
    """A GpuSource over a FakeNvml with *gpus* (not opened)."""
    nvml = FakeNvml(gpus)
    return GpuSource(nvml=nvml, visible_devices=kwargs.get("visible_devices")), nvml


@pytest.fixture
def real_gpu() -> Iterator[GpuSource]:
    """An open GpuSource on the real driver; skips without an NVIDIA GPU."""
    source = GpuSource(visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if not source.open():
        reason = source.statistics().unavailable_reason
        source.close()
        pytest.skip(f"no NVIDIA GPU/driver: {reason}")
    yield source
    source.close()


# -- import cost and the absent-driver path ----------------------------------------
def test_importing_the_source_does_not_import_pynvml() -> None:
    """Importing the module, or building a source, loads no NVML binding (lazy in open())."""
    code = (
        "import sys\n"
        "from resource_supervisor._sources._gpu import GpuSource\n"
        "GpuSource(visible_devices='0')\n"
        "import resource_supervisor._gpu\n"
        "print('pynvml' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.split() == ["False", "False"]


def test_without_a_driver_only_gpu_count_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """With pynvml but no driver, open() is False, read() gives gpu_count 0, logs debug only."""
    caplog.set_level(logging.DEBUG, logger="resource_supervisor")
    source = GpuSource(visible_devices=None)
    if source.open():  # pragma: no cover - only on a machine with a driver
        source.close()
        pytest.skip("an NVIDIA driver is present: the absent-driver path cannot be taken")
    assert source.read() == {"gpu_count": 0}
    assert source.devices() == ()
    stats = source.statistics()
    assert not stats.available
    assert stats.unavailable_reason is not None
    assert "NVML could not be initialised" in stats.unavailable_reason
    assert all(r.levelno < logging.WARNING for r in caplog.records)
    assert any("GPU metrics unavailable" in r.getMessage() for r in caplog.records)
    source.close()


def test_without_the_package_open_is_false(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When pynvml cannot be imported, open() says so quietly and never raises."""
    caplog.set_level(logging.DEBUG, logger="resource_supervisor")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    source = GpuSource()
    assert source.open() is False
    assert source.read() == {"gpu_count": 0}
    reason = source.statistics().unavailable_reason
    assert reason is not None
    assert "nvidia-ml-py is not installed" in reason
    assert all(r.levelno < logging.WARNING for r in caplog.records)
    source.close()


def test_failed_open_is_remembered() -> None:
    """After NVML failed to initialise, open() answers False again without retrying."""
    nvml = FakeNvml([FakeGpu(UUIDS[0])], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    source = GpuSource(nvml=nvml)
    assert source.open() is False
    assert source.open() is False
    assert nvml.calls == {"init": 1}  # never shut down what never started
    reason = source.statistics().unavailable_reason
    assert reason is not None
    assert "Driver Not Loaded" in reason
    source.close()
    assert nvml.calls == {"init": 1}


def test_listing_failure_shuts_nvml_down() -> None:
    """If NVML starts but devices cannot be listed, open() is False and NVML is shut down."""
    nvml = FakeNvml([FakeGpu(UUIDS[0])])
    nvml.count_error = pynvml.NVML_ERROR_UNKNOWN
    source = GpuSource(nvml=nvml)
    assert source.open() is False
    assert nvml.calls["shutdown"] == 1
    source.close()
    assert nvml.calls["shutdown"] == 1


# -- lifecycle -------------------------------------------------------------------
def test_open_initialises_once_and_caches_handles() -> None:
    """nvmlInit runs once and handles are taken once, however often open/read are called."""
    source, nvml = fake_source([FakeGpu(UUIDS[0]), FakeGpu(UUIDS[1])])
    assert source.open() is True
    assert source.open() is True
    for _ in range(5):
        source.read()
    assert nvml.calls["init"] == 1
    assert nvml.calls["count"] == 1
    assert nvml.calls["handle"] == 2
    assert nvml.calls["memory"] == 10
    assert source.statistics().reads == 5
    source.close()


def test_close_shuts_down_once_and_stays_closed() -> None:
    """close() calls nvmlShutdown once; afterwards reads give gpu_count 0 and open() is False."""
    source, nvml = fake_source([FakeGpu(UUIDS[0])])
    assert source.open()
    source.close()
    source.close()
    assert nvml.calls["shutdown"] == 1
    assert source.read() == {"gpu_count": 0}
    assert source.open() is False
    assert source.devices() == ()
    assert nvml.calls["init"] == 1


def test_unopened_source_reads_nothing() -> None:
    """read() before open() touches no NVML call and reports gpu_count 0."""
    source, nvml = fake_source([FakeGpu(UUIDS[0])])
    assert source.read() == {"gpu_count": 0}
    assert nvml.calls == {}
    source.close()
    assert nvml.calls == {}


# -- reading ---------------------------------------------------------------------
def test_read_reports_memory_utilisation_and_own_process_memory() -> None:
    """Each metric has its documented name and value; only this PID's memory is counted."""
    me = os.getpid()
    gpu = FakeGpu(
        UUIDS[0],
        total=1000 * MIB,
        used=250 * MIB,
        utilization=40,
        processes=[FakeProcess(me, 100 * MIB), FakeProcess(me + 1, 150 * MIB)],
    )
    source, _ = fake_source([gpu])
    assert source.open()
    assert source.read() == {
        "gpu_count": 1,
        "gpu_read_failures_total": 0,
        "gpu0_memory_total_bytes": 1000 * MIB,
        "gpu0_memory_used_bytes": 250 * MIB,
        "gpu0_memory_free_bytes": 750 * MIB,
        "gpu0_memory_percent": 25.0,
        "gpu0_utilization_percent": 40.0,
        "gpu0_process_memory_bytes": 100 * MIB,
    }
    gpu.used, gpu.processes = 500 * MIB, []
    metrics = source.read()
    assert metrics["gpu0_memory_percent"] == 50.0
    assert metrics["gpu0_process_memory_bytes"] == 0  # no context on the device: uses nothing
    source.close()


def test_zero_sized_device_has_no_percent() -> None:
    """A device reporting 0 total bytes (broken or virtual) gets no percent, not a crash."""
    source, _ = fake_source([FakeGpu(UUIDS[0], total=0)])
    assert source.open()
    metrics = source.read()
    assert metrics["gpu0_memory_total_bytes"] == 0
    assert "gpu0_memory_percent" not in metrics
    source.close()


def test_pid_can_be_chosen() -> None:
    """The process whose memory is reported can be given explicitly."""
    gpu = FakeGpu(UUIDS[0], processes=[FakeProcess(4242, 7 * MIB)])
    source = GpuSource(nvml=FakeNvml([gpu]), pid=4242)
    assert source.open()
    assert source.read()["gpu0_process_memory_bytes"] == 7 * MIB
    source.close()


def test_unknown_process_memory_is_left_out() -> None:
    """Where NVML cannot tell a process's memory (None, as on WDDM), the metric is absent."""
    gpu = FakeGpu(UUIDS[0], processes=[FakeProcess(os.getpid(), None)])
    source, _ = fake_source([gpu])
    assert source.open()
    metrics = source.read()
    assert "gpu0_process_memory_bytes" not in metrics
    assert "gpu0_memory_used_bytes" in metrics
    source.close()


def test_unsupported_utilisation_is_left_out_and_not_asked_again() -> None:
    """A device without utilisation support still reports memory; no failure is counted."""
    source, nvml = fake_source([FakeGpu(UUIDS[0], utilization=None)])
    assert source.open()
    for _ in range(3):
        metrics = source.read()
        assert "gpu0_utilization_percent" not in metrics
        assert metrics["gpu0_memory_percent"] == 0.0
    assert nvml.calls["utilization"] == 1
    assert source.statistics().read_failures == 0
    source.close()


def test_process_query_unsupported_is_left_out_and_not_asked_again() -> None:
    """Where the process list cannot be queried at all, the metric is absent, nothing counted."""
    gpu = FakeGpu(UUIDS[0], processes_error=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    source, nvml = fake_source([gpu])
    assert source.open()
    for _ in range(3):
        metrics = source.read()
        assert "gpu0_process_memory_bytes" not in metrics
        assert "gpu0_memory_used_bytes" in metrics
    assert nvml.calls["processes"] == 1
    assert source.statistics().read_failures == 0
    source.close()


@pytest.mark.parametrize("query", ["utilization_error", "processes_error"])
def test_other_query_errors_fail_the_device_read(query: str) -> None:
    """An error other than "not supported" in any query skips the device for that sample."""
    gpu = FakeGpu(UUIDS[0])
    setattr(gpu, query, pynvml.NVML_ERROR_UNKNOWN)
    source, _ = fake_source([gpu])
    assert source.open()
    assert source.read() == {"gpu_count": 1, "gpu_read_failures_total": 1}
    setattr(gpu, query, None)
    assert "gpu0_memory_used_bytes" in source.read()  # asked again, and it works now
    source.close()


def test_shutdown_error_does_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    """close() never raises for an NVML shutdown error; it logs at debug level only."""
    caplog.set_level(logging.DEBUG, logger="resource_supervisor")
    source, nvml = fake_source([FakeGpu(UUIDS[0])])
    nvml.shutdown_error = pynvml.NVML_ERROR_UNKNOWN
    assert source.open()
    source.close()
    assert nvml.calls["shutdown"] == 1
    assert source.read() == {"gpu_count": 0}
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_failed_device_is_skipped_and_counted() -> None:
    """A device whose read fails is left out of that sample, counted, and read again next time."""
    good, lost = FakeGpu(UUIDS[0], used=MIB), FakeGpu(UUIDS[1], used=2 * MIB)
    lost.error = pynvml.NVML_ERROR_GPU_IS_LOST
    source, _ = fake_source([good, lost])
    assert source.open()
    metrics = source.read()
    assert metrics["gpu_count"] == 2
    assert metrics["gpu_read_failures_total"] == 1
    assert metrics["gpu0_memory_used_bytes"] == MIB
    assert not any(key.startswith("gpu1_") for key in metrics)
    assert source.read()["gpu_read_failures_total"] == 2
    lost.error = None
    metrics = source.read()
    assert metrics["gpu1_memory_used_bytes"] == 2 * MIB
    assert metrics["gpu_read_failures_total"] == 2
    assert source.statistics().read_failures == 2
    source.close()


# -- CUDA_VISIBLE_DEVICES ---------------------------------------------------------
def test_visible_devices_are_reported_in_visible_order() -> None:
    """gpu{i} follows CUDA_VISIBLE_DEVICES order: "2,0" makes physical 2 gpu0."""
    gpus = [FakeGpu(uuid, used=(n + 1) * MIB, name=f"card{n}") for n, uuid in enumerate(UUIDS)]
    source, _ = fake_source(gpus, visible_devices="2,0")
    assert source.open()
    assert source.devices() == (
        GpuDevice(0, "card2", UUIDS[2], 2),
        GpuDevice(1, "card0", UUIDS[0], 0),
    )
    metrics = source.read()
    assert metrics["gpu_count"] == 2
    assert metrics["gpu0_memory_used_bytes"] == 3 * MIB
    assert metrics["gpu1_memory_used_bytes"] == 1 * MIB
    assert "gpu2_memory_used_bytes" not in metrics
    source.close()


def test_visible_devices_by_uuid() -> None:
    """A GPU-<uuid> entry (or a unique prefix of one) selects that device."""
    gpus = [FakeGpu(uuid) for uuid in UUIDS]
    source, _ = fake_source(gpus, visible_devices="GPU-2222f")
    assert source.open()
    assert [d.uuid for d in source.devices()] == [UUIDS[2]]
    source.close()


def test_empty_visible_devices_means_no_gpu() -> None:
    """CUDA_VISIBLE_DEVICES="" hides every device: open() is False and NVML is shut down."""
    source, nvml = fake_source([FakeGpu(UUIDS[0])], visible_devices="")
    assert source.open() is False
    assert source.read() == {"gpu_count": 0}
    assert nvml.calls["shutdown"] == 1
    reason = source.statistics().unavailable_reason
    assert reason is not None
    assert "no visible device" in reason
    source.close()
    assert nvml.calls["shutdown"] == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, (0, 1, 2)),
        ("", ()),
        ("0", (0,)),
        ("1,0", (1, 0)),
        (" 2 , 1 ", (2, 1)),
        ("0,7,1", (0,)),  # out of range: stop there, as CUDA does
        ("-1", ()),  # the usual way to hide every device
        ("0,0,1", (0,)),  # a repeat is invalid
        ("1,abc,0", (1,)),
        (UUIDS[1], (1,)),
        ("GPU-1111", (0,)),
        ("GPU-2222", ()),  # ambiguous prefix
        (f"0,{UUIDS[0]}", (0,)),  # the same device twice
        ("MIG-abc", ()),
        ("٣", ()),  # a decimal digit to Python, not to CUDA
    ],
)
def test_select_visible_table(spec: str | None, expected: tuple[int, ...]) -> None:
    """CUDA_VISIBLE_DEVICES parsing follows CUDA's rules (indices, UUID prefixes, stop at bad)."""
    assert select_visible(spec, UUIDS) == expected


@given(
    count=st.integers(0, 8),
    picks=st.lists(st.integers(0, 7), unique=True, max_size=8),
    tail=st.text(max_size=10),
)
def test_select_visible_keeps_valid_prefix(count: int, picks: list[int], tail: str) -> None:
    """Valid distinct indices are kept in order; anything after a bad entry is ignored."""
    uuids = [f"GPU-{n:08d}-0000" for n in range(count)]
    valid = [p for p in picks if p < count]
    spec = ",".join([*map(str, valid), "bad", tail])
    result = select_visible(spec, uuids)
    assert result == tuple(valid)
    assert set(result) <= set(range(count))


# -- with a real GPU ----------------------------------------------------------------
@pytest.mark.gpu
def test_real_gpu_reports_consistent_memory(real_gpu: GpuSource) -> None:
    """On a real device, total = used + free (within reserve), percent matches, names follow."""
    metrics = real_gpu.read()
    count = metrics["gpu_count"]
    assert isinstance(count, int)
    assert count == len(real_gpu.devices()) >= 1
    for i in range(count):
        total = metrics[f"gpu{i}_memory_total_bytes"]
        used = metrics[f"gpu{i}_memory_used_bytes"]
        free = metrics[f"gpu{i}_memory_free_bytes"]
        assert isinstance(total, int)
        assert isinstance(used, int)
        assert isinstance(free, int)
        assert total > 0
        assert used + free <= total
        assert metrics[f"gpu{i}_memory_percent"] == pytest.approx(100.0 * used / total)
    assert all(d.uuid.startswith("GPU-") for d in real_gpu.devices())
    assert metrics["gpu_read_failures_total"] == 0


@pytest.mark.gpu
def test_real_gpu_honours_visible_devices(real_gpu: GpuSource) -> None:
    """On a real machine, "" hides every device and a UUID selects exactly that device."""
    first = real_gpu.devices()[0]
    hidden = GpuSource(visible_devices="")
    assert hidden.open() is False
    hidden.close()
    by_uuid = GpuSource(visible_devices=first.uuid)
    assert by_uuid.open() is True
    assert [d.uuid for d in by_uuid.devices()] == [first.uuid]
    assert by_uuid.read()["gpu_count"] == 1
    by_uuid.close()
