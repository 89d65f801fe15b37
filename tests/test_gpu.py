"""
Tests for GPU pressure: policy readings, the PyTorch cache reclaimer, batch sizing.

``torch`` is not a dependency: the reclaimer is tested without it (it must do and
import nothing), against a stand-in ``torch`` module put in ``sys.modules`` for the
orchestration (thread, order, measured bytes), and on a real GPU with real torch
in the ``gpu``-marked test, which skips without one.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import types
from typing import TYPE_CHECKING

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from resource_supervisor._cleanup import CleanupRequest
from resource_supervisor._gpu import (
    GPU_RESERVE_FRACTION,
    TorchGpuReclaimer,
    freed_bytes,
    gpu_batch_size_for,
    gpu_readings,
    parse_device,
)
from resource_supervisor._policy import Grade, Reading, Thresholds, grade
from resource_supervisor._snapshot import MetricValue, PressureLevel
from resource_supervisor._sources._gpu import GpuSource
from tests.strategies import make_snapshot, pressure_levels

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

N, W, C = PressureLevel.NORMAL, PressureLevel.WARNING, PressureLevel.CRITICAL
MIB = 1024 * 1024
GIB = 1024 * MIB


def request(*, aggressive: bool = False) -> CleanupRequest:
    """A cleanup request as the dispatcher would send for GPU pressure."""
    return CleanupRequest(
        aggressive=aggressive,
        level=C if aggressive else W,
        reason="test",
        snapshot=make_snapshot(),
        resource="gpu",
        device="cuda:0",
    )


def gpu_metrics(*percents: float | None) -> dict[str, MetricValue]:
    """A GpuSource.read()-shaped mapping; ``None`` marks a device whose read failed."""
    metrics: dict[str, MetricValue] = {"gpu_count": len(percents), "gpu_read_failures_total": 0}
    for i, percent in enumerate(percents):
        if percent is not None:
            metrics[f"gpu{i}_memory_percent"] = percent
    return metrics


# -- policy readings -------------------------------------------------------------------
def test_no_thresholds_no_readings() -> None:
    """With both GPU thresholds disabled (None), no reading is produced."""
    assert gpu_readings(gpu_metrics(99.0), warning=None, critical=None, hysteresis=5) == []


def test_no_gpu_no_readings() -> None:
    """Without a visible GPU (gpu_count 0 or absent), there is nothing to grade."""
    assert gpu_readings({"gpu_count": 0}, warning=75, critical=85, hysteresis=5) == []
    assert gpu_readings({}, warning=75, critical=85, hysteresis=5) == []
    assert gpu_readings({"gpu_count": "n/a"}, warning=75, critical=85, hysteresis=5) == []


def test_one_reading_per_device() -> None:
    """Each visible device becomes Reading("gpu", percent, thresholds, device="cuda:i")."""
    readings = gpu_readings(gpu_metrics(10.0, 90.0), warning=75, critical=None, hysteresis=2)
    thresholds = Thresholds(75, None, 2)
    assert readings == [
        Reading("gpu", 10.0, thresholds, device="cuda:0"),
        Reading("gpu", 90.0, thresholds, device="cuda:1"),
    ]


def test_failed_device_read_is_nan() -> None:
    """A device counted but missing its percent (failed read) reads NaN, not absent."""
    readings = gpu_readings(gpu_metrics(None, 50.0), warning=75, critical=85, hysteresis=5)
    assert [r.device for r in readings] == ["cuda:0", "cuda:1"]
    assert math.isnan(readings[0].value)
    assert readings[1].value == 50.0


def test_grading_keeps_hysteresis_per_device_and_names_the_device() -> None:
    """Each GPU holds its own level through the hysteresis band; the trigger names the device."""

    def step(
        previous: dict[str, PressureLevel], *percents: float | None
    ) -> tuple[Grade, dict[str, PressureLevel]]:
        readings = gpu_readings(gpu_metrics(*percents), warning=75, critical=85, hysteresis=5)
        result = grade(previous, readings)
        return result, dict(result.levels)

    first, levels = step({}, 80.0, 10.0)
    assert first.level == W
    assert first.trigger is not None
    assert first.trigger.device == "cuda:0"
    assert levels == {"gpu:cuda:0": W, "gpu:cuda:1": N}

    held, levels = step(levels, 72.0, 72.0)  # inside cuda:0's band; cuda:1 never entered
    assert levels == {"gpu:cuda:0": W, "gpu:cuda:1": N}
    assert held.trigger is not None
    assert held.trigger.device == "cuda:0"

    _, levels = step(levels, None, 72.0)  # cuda:0's read failed: its level holds
    assert levels["gpu:cuda:0"] == W

    worse, levels = step(levels, 69.0, 86.0)
    assert levels == {"gpu:cuda:0": N, "gpu:cuda:1": C}
    assert worse.level == C
    assert worse.trigger is not None
    assert worse.trigger.device == "cuda:1"


# -- parse_device ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "index"), [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3), ("0", 0), ("12", 12)]
)
def test_parse_device_table(device: str, index: int) -> None:
    """'cuda', 'cuda:N' and 'N' name CUDA device N (cuda alone is 0)."""
    assert parse_device(device) == index


@pytest.mark.parametrize("device", ["cpu", "", "cuda:", "cuda:-1", "cuda:a", "gpu:0", " 0", "٣"])
def test_parse_device_rejects_others_naming_the_value(device: str) -> None:
    """Anything else raises ValueError whose message names the value given."""
    with pytest.raises(ValueError, match="not a CUDA device") as info:
        parse_device(device)
    assert repr(device) in str(info.value)


@given(st.integers(0, 10_000))
def test_parse_device_round_trips(index: int) -> None:
    """parse_device inverts both spellings of an index."""
    assert parse_device(f"cuda:{index}") == parse_device(str(index)) == index


# -- gpu_batch_size_for ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "floor", "free", "level", "per_item", "expected"),
    [
        (64, 16, 8 * GIB, N, None, 64),
        (64, 16, 8 * GIB, W, None, 32),
        (64, 16, 8 * GIB, C, None, 16),
        (128, 1, 8 * GIB, C, None, 32),
        (64, 16, 0, N, None, 64),  # without a per-item size only the level counts
        (64, 1, 20 * GIB, N, GIB, 16),  # 20 GiB free - 4 GiB reserve of 80 GiB
        (64, 1, 20 * GIB, W, GIB, 16),
        (64, 1, 20 * GIB, C, GIB, 16),
        (64, 4, 2 * GIB, N, GIB, 4),  # free below the reserve: the floor
        (8, 2, 80 * GIB, N, MIB, 8),  # plenty of room: never above base
    ],
)
def test_gpu_batch_size_table(
    base: int, floor: int, free: int, level: PressureLevel, per_item: int | None, expected: int
) -> None:
    """Level scales the base (1, 1/2, 1/4); per-item size caps it to what fits; floor holds."""
    assert (
        gpu_batch_size_for(
            base_batch_size=base,
            min_batch_size=floor,
            free_bytes=free,
            total_bytes=80 * GIB,
            level=level,
            per_item_bytes=per_item,
        )
        == expected
    )


@st.composite
def sizing_args(draw: st.DrawFn) -> dict[str, int | None]:
    """Valid keyword arguments for gpu_batch_size_for, except level."""
    base = draw(st.integers(1, 4096))
    total = draw(st.integers(1, 1 << 40))
    return {
        "base_batch_size": base,
        "min_batch_size": draw(st.integers(1, base)),
        "free_bytes": draw(st.integers(0, total)),
        "total_bytes": total,
        "per_item_bytes": draw(st.none() | st.integers(1, 1 << 32)),
    }


def size(args: dict[str, int | None], level: PressureLevel, **change: int) -> int:
    """Call gpu_batch_size_for with *args*, *level* and overrides."""
    merged = {**args, **change}
    base, floor = merged["base_batch_size"], merged["min_batch_size"]
    free, total = merged["free_bytes"], merged["total_bytes"]
    assert base is not None
    assert floor is not None
    assert free is not None
    assert total is not None
    return gpu_batch_size_for(
        base_batch_size=base,
        min_batch_size=floor,
        free_bytes=free,
        total_bytes=total,
        level=level,
        per_item_bytes=merged["per_item_bytes"],
    )


@given(sizing_args(), pressure_levels())
def test_gpu_batch_size_stays_within_bounds(
    args: dict[str, int | None], level: PressureLevel
) -> None:
    """The result is always within [min_batch_size, base_batch_size]."""
    result = size(args, level)
    assert args["min_batch_size"] is not None
    assert args["base_batch_size"] is not None
    assert args["min_batch_size"] <= result <= args["base_batch_size"]


@given(sizing_args(), pressure_levels(), pressure_levels())
def test_gpu_batch_size_never_grows_with_pressure(
    args: dict[str, int | None], low: PressureLevel, high: PressureLevel
) -> None:
    """A higher pressure level never gives a larger batch."""
    assume(low <= high)
    assert size(args, high) <= size(args, low)


@given(sizing_args(), pressure_levels(), st.integers(0, 1 << 40))
def test_gpu_batch_size_never_shrinks_with_more_free_memory(
    args: dict[str, int | None], level: PressureLevel, more: int
) -> None:
    """More free memory never gives a smaller batch."""
    free, total = args["free_bytes"], args["total_bytes"]
    assert free is not None
    assert total is not None
    bigger = min(total, free + more)
    assert size(args, level, free_bytes=bigger) >= size(args, level)


@given(
    base=st.integers(2, 4096),
    total=st.integers(1 << 20, 1 << 40),
    free_share=st.floats(0.0, 1.0),
    per_item_share=st.floats(1e-6, 1.0),
    level=pressure_levels(),
)
def test_gpu_batch_above_the_floor_fits(
    base: int, total: int, free_share: float, per_item_share: float, level: PressureLevel
) -> None:
    """Unless it is the floor, a batch of per-item size fits in free memory less the reserve."""
    free = int(total * free_share)
    per_item = max(1, int(total * per_item_share / base))  # often fits, sometimes not
    result = gpu_batch_size_for(
        base_batch_size=base,
        min_batch_size=1,
        free_bytes=free,
        total_bytes=total,
        level=level,
        per_item_bytes=per_item,
    )
    if result > 1:
        assert result * per_item <= free - int(total * GPU_RESERVE_FRACTION)


@pytest.mark.parametrize(
    "bad",
    [
        {"base_batch_size": 0, "min_batch_size": 1},
        {"base_batch_size": 8, "min_batch_size": 0},
        {"base_batch_size": 8, "min_batch_size": 9},
        {"free_bytes": -1},
        {"total_bytes": 0},
        {"per_item_bytes": 0},
    ],
)
def test_gpu_batch_size_rejects_bad_arguments(bad: dict[str, int]) -> None:
    """Out-of-range arguments raise ValueError instead of a nonsense size."""
    args: dict[str, int | None] = {
        "base_batch_size": 8,
        "min_batch_size": 1,
        "free_bytes": GIB,
        "total_bytes": 2 * GIB,
        "per_item_bytes": None,
    }
    with pytest.raises(ValueError, match=r"need|must be positive"):
        size(args, N, **bad)


# -- freed bytes -----------------------------------------------------------------------
def test_freed_bytes_prefers_own_process_memory() -> None:
    """
    Own-process memory is used where this process held some before; device used
    memory otherwise (also when NVML reports 0 for us, as in a PID namespace).
    """
    before: dict[str, MetricValue] = {
        "gpu_count": 4,
        "gpu0_process_memory_bytes": 900,
        "gpu0_memory_used_bytes": 5000,
        "gpu1_memory_used_bytes": 700,
        "gpu2_memory_used_bytes": 100,
        "gpu3_process_memory_bytes": 0,
        "gpu3_memory_used_bytes": 800,
    }
    after: dict[str, MetricValue] = {
        "gpu_count": 4,
        "gpu0_process_memory_bytes": 400,
        "gpu0_memory_used_bytes": 1000,
        "gpu1_memory_used_bytes": 200,
        "gpu2_memory_used_bytes": 300,  # grew: other processes; counts as 0 freed
        "gpu3_process_memory_bytes": 0,
        "gpu3_memory_used_bytes": 500,
    }
    assert freed_bytes(before, after) == {"cuda:0": 500, "cuda:1": 500, "cuda:2": 0, "cuda:3": 300}


def test_freed_bytes_skips_devices_missing_a_reading() -> None:
    """A device absent from either reading (failed read, no GPU) is not reported."""
    before: dict[str, MetricValue] = {"gpu_count": 2, "gpu0_memory_used_bytes": 10}
    after: dict[str, MetricValue] = {
        "gpu_count": 2,
        "gpu0_memory_used_bytes": 4,
        "gpu1_memory_used_bytes": 4,
    }
    assert freed_bytes(before, after) == {"cuda:0": 6}
    assert freed_bytes({"gpu_count": 0}, {"gpu_count": 0}) == {}


# -- TorchGpuReclaimer -----------------------------------------------------------------
async def test_reclaimer_without_torch_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch imported, cleanup is a recorded no-op and imports nothing."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    reclaimer = TorchGpuReclaimer()
    await reclaimer.cleanup(request())
    await reclaimer.cleanup(request(aggressive=True))
    assert "torch" not in sys.modules
    stats = reclaimer.statistics()
    assert stats.last_outcome == "no_torch"
    assert (stats.runs, stats.skipped, stats.total_freed_bytes) == (0, 2, 0)
    assert reclaimer.last_freed_bytes == {}


class FakeCuda:
    """The three ``torch.cuda`` functions the reclaimer uses; records calls and threads."""

    def __init__(self, *, initialised: bool) -> None:
        self.initialised = initialised
        self.calls: list[tuple[str, int]] = []
        self.on_empty: Callable[[], None] | None = None

    def is_initialized(self) -> bool:
        return self.initialised

    def empty_cache(self) -> None:
        self.calls.append(("empty_cache", threading.get_ident()))
        if self.on_empty is not None:
            self.on_empty()

    def ipc_collect(self) -> None:
        self.calls.append(("ipc_collect", threading.get_ident()))


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """A stand-in ``torch`` module in sys.modules whose CUDA is initialised."""
    cuda = FakeCuda(initialised=True)
    module = types.ModuleType("torch")
    module.cuda = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", module)
    return cuda


async def test_reclaimer_leaves_uninitialised_cuda_alone(fake_torch: FakeCuda) -> None:
    """With torch loaded but CUDA never initialised, nothing runs (no context is created)."""
    fake_torch.initialised = False
    reclaimer = TorchGpuReclaimer()
    await reclaimer.cleanup(request())
    assert fake_torch.calls == []
    assert reclaimer.statistics().last_outcome == "cuda_not_initialized"
    assert reclaimer.statistics().skipped == 1


async def test_reclaimer_empties_cache_off_the_loop_and_measures(fake_torch: FakeCuda) -> None:
    """With torch using CUDA: empty_cache then ipc_collect in a worker thread; bytes measured."""
    from tests.sources.test_gpu_source import FakeGpu, FakeNvml, FakeProcess

    me = os.getpid()
    gpus = [
        FakeGpu("GPU-0", used=3 * GIB, processes=[FakeProcess(me, 2 * GIB)]),
        FakeGpu("GPU-1", used=GIB),
    ]
    source = GpuSource(nvml=FakeNvml(gpus))
    assert source.open()

    def release() -> None:
        # What the real empty_cache does to NVML's view: cached blocks go back.
        gpus[0].used = 2 * GIB
        gpus[0].processes = [FakeProcess(me, GIB)]
        gpus[1].used = GIB - 256 * MIB

    fake_torch.on_empty = release
    reclaimer = TorchGpuReclaimer(source)
    await reclaimer.cleanup(request())

    assert [name for name, _ in fake_torch.calls] == ["empty_cache", "ipc_collect"]
    assert all(ident != threading.get_ident() for _, ident in fake_torch.calls)
    assert reclaimer.last_freed_bytes == {"cuda:0": GIB, "cuda:1": 256 * MIB}
    stats = reclaimer.statistics()
    assert stats.last_outcome == "reclaimed"
    assert (stats.runs, stats.skipped) == (1, 0)
    assert stats.total_freed_bytes == GIB + 256 * MIB

    await reclaimer.cleanup(request(aggressive=True))
    assert reclaimer.last_freed_bytes == {"cuda:0": 0, "cuda:1": 0}  # nothing more cached
    assert reclaimer.statistics().total_freed_bytes == GIB + 256 * MIB
    source.close()


async def test_reclaimer_without_a_source_still_empties(fake_torch: FakeCuda) -> None:
    """Without a GpuSource the cache is still returned; nothing is measured."""
    reclaimer = TorchGpuReclaimer()
    await reclaimer.cleanup(request())
    assert [name for name, _ in fake_torch.calls] == ["empty_cache", "ipc_collect"]
    assert reclaimer.last_freed_bytes == {}
    assert reclaimer.statistics().runs == 1


# -- with a real GPU and torch -----------------------------------------------------------
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


@pytest.mark.gpu
async def test_real_tensor_raises_pressure_and_empty_cache_frees_it(real_gpu: GpuSource) -> None:
    """
    On a real GPU: a tensor's memory shows in NVML's used bytes, grades WARNING on
    cuda:0 against a lowered threshold, and after ``del`` the reclaimer returns the
    reserved memory (torch's cache empties, NVML sees the bytes freed).
    """
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("torch cannot use CUDA here")
    torch.zeros(1, device="cuda:0")  # create the context before the baseline
    torch.cuda.synchronize()
    before = real_gpu.read()

    size = 512 * MIB
    tensor = torch.empty(size, dtype=torch.uint8, device="cuda:0")
    tensor.fill_(1)
    torch.cuda.synchronize()
    during = real_gpu.read()
    used_before, used_during = before["gpu0_memory_used_bytes"], during["gpu0_memory_used_bytes"]
    assert isinstance(used_before, int)
    assert isinstance(used_during, int)
    assert used_during - used_before >= size // 2

    p_before, p_during = before["gpu0_memory_percent"], during["gpu0_memory_percent"]
    assert isinstance(p_before, float)
    assert isinstance(p_during, float)
    lowered = (p_before + p_during) / 2  # between the two readings
    readings = gpu_readings(before, warning=lowered, critical=None, hysteresis=0.0)
    calm = grade({}, readings)
    assert calm.levels["gpu:cuda:0"] == N
    pressed = grade(
        calm.levels, gpu_readings(during, warning=lowered, critical=None, hysteresis=0.0)
    )
    assert pressed.level == W
    assert pressed.trigger is not None
    assert pressed.trigger.device == "cuda:0"

    del tensor
    assert torch.cuda.memory_reserved(0) >= size  # freed by Python, still cached by torch
    reclaimer = TorchGpuReclaimer(real_gpu)
    await reclaimer.cleanup(request())
    assert torch.cuda.memory_reserved(0) < size
    assert reclaimer.statistics().last_outcome == "reclaimed"
    assert reclaimer.last_freed_bytes["cuda:0"] >= size // 2
