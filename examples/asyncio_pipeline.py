"""
The RAG pipeline of ``fastapi_rag_service.py`` without a web framework.

A supervisor runs the pipeline's CPU-bound embedding in its process lane and the
retrieval in its thread lane, while this script prints the metric stream (one line
per snapshot). It answers questions from several conversations for a few seconds,
asks for one cleanup pass, prints a summary, and exits::

    python examples/asyncio_pipeline.py --duration 3
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import TYPE_CHECKING

import anyio
from fastapi_rag_service import SAMPLE_DOCUMENTS, RagPipeline

from resource_supervisor import MetricsSnapshot, PressureLevel, Supervisor, SupervisorSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

QUESTIONS = (
    "how is memory measured",
    "what happens at critical pressure",
    "which lane runs blocking io",
    "what does the prometheus collector do",
    "how are idle sessions evicted",
    "when does load shedding answer 503",
)


def snapshot_line(snapshot: MetricsSnapshot, started: float) -> str:
    """One compact line for a snapshot."""
    return (
        f"  t={snapshot.last_metrics_update_ts - started:5.1f}s "
        f"{snapshot.pressure_level.name:<8} mem {snapshot.memory_percent:5.1f}% "
        f"rss {snapshot.process_rss_bytes / 2**20:6.1f} MiB "
        f"threads {snapshot.get('thread_lane_busy', 0)}/{snapshot.get('thread_lane_capacity', 0)} "
        f"procs {snapshot.get('process_workers_busy', 0)}/"
        f"{snapshot.get('process_workers_live', 0)} "
        f"sessions {snapshot.active_sessions_rag} "
        f"answers {snapshot.get('rag_answers_total', 0)}"
    )


async def print_stream(
    stream: AsyncIterator[MetricsSnapshot], started: float, levels: list[PressureLevel]
) -> None:
    """Print every snapshot until the stream ends or the task is cancelled."""
    async for snapshot in stream:
        levels.append(snapshot.pressure_level)
        print(snapshot_line(snapshot, started), flush=True)


async def converse(pipeline: RagPipeline, conversation: int, deadline: float) -> int:
    """Ask questions in one conversation until *deadline*; return how many."""
    asked = 0
    for question in itertools.cycle(QUESTIONS):
        if anyio.current_time() >= deadline:
            break
        await pipeline.ask(f"conversation-{conversation}", f"{question} (v{asked % 40})")
        asked += 1
    return asked


async def run(duration: float, conversations: int) -> int:
    """Run the pipeline for *duration* seconds; return the number of answers."""
    settings = SupervisorSettings(monitoring_interval=0.5)
    started = time.time()
    async with Supervisor(settings) as sup:
        pipeline = RagPipeline(sup)
        pipeline.attach()
        try:
            added = await pipeline.add_documents(SAMPLE_DOCUMENTS)
            print(f"indexed {added} documents in worker processes", flush=True)
            counts: list[int] = []
            levels = [sup.level]
            async with sup.subscribe(policy="latest") as stream, anyio.create_task_group() as tg:
                tg.start_soon(print_stream, stream, started, levels)
                deadline = anyio.current_time() + duration

                async def one(conversation: int) -> None:
                    counts.append(await converse(pipeline, conversation, deadline))

                async with anyio.create_task_group() as load:
                    for conversation in range(conversations):
                        load.start_soon(one, conversation)
                tg.cancel_scope.cancel()
            report = await sup.request_cleanup(reason="end of run")
            snapshot = await sup.update_metrics()
        finally:
            pipeline.detach()
    answered = sum(counts)
    print("summary")
    print(f"  answered        {answered} questions in {conversations} conversations")
    print(f"  cache           {pipeline.cache.hits} hits, {pipeline.cache.misses} misses")
    print(f"  sessions        {snapshot.active_sessions_rag} open at the end")
    print(
        f"  cleanup         {len(report.outcomes)} handlers, "
        f"{'all ok' if report.ok else 'failures: ' + str(report.failures)}, "
        f"freed {report.bytes_freed / 2**20:.1f} MiB"
    )
    print(f"  max level       {max([*levels, snapshot.pressure_level]).name}")
    return answered


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description="RAG pipeline under a supervisor, no web.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of questions")
    parser.add_argument("--conversations", type=int, default=6)
    args = parser.parse_args(argv)
    answered = anyio.run(run, args.duration, args.conversations)
    return 0 if answered else 1


if __name__ == "__main__":
    raise SystemExit(main())
