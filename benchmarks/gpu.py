"""
GPU sample cost (NVML via ``GpuSource.read()``) next to the host sample
(``Sampler.sample()``). Skipped, with a note, where no NVIDIA GPU is visible.
"""

from __future__ import annotations

import os

from ._harness import SkipSuite, SuiteContext, sequential_case


async def run(ctx: SuiteContext) -> None:
    """
    Compare the GPU read with the host sample.

    Raises:
        SkipSuite: When NVML finds no visible device.

    Cancellation:
        Propagates; both sources are closed on the way out.
    """
    from resource_supervisor._sampler import Sampler
    from resource_supervisor._sources._gpu import GpuSource

    gpu = GpuSource(visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    try:
        if not gpu.open():
            raise SkipSuite("no NVIDIA GPU visible through NVML on this machine")
        n = ctx.scale(2_000, 300)

        async def gpu_read() -> None:
            gpu.read()

        with Sampler() as sampler:
            await sampler.sample()

            async def both() -> None:
                await sampler.sample()
                gpu.read()

            await ctx.compare(
                f"one sample, {n} samples",
                [
                    sequential_case("host: Sampler.sample()", sampler.sample, n),
                    sequential_case("GPU: GpuSource.read()", gpu_read, n),
                    sequential_case("host + GPU", both, n),
                ],
                unit="us/sample",
            )
        devices = gpu.devices()
        ctx.note(f"{len(devices)} GPU(s): {', '.join(d.name for d in devices)}")
    finally:
        gpu.close()
