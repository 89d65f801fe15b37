"""
Load generation and bookkeeping for ``examples/demo.py``.

Bounded load: a fixed number of client tasks, each sending one request at a time
until a deadline, so the demo can never pile up more than ``concurrency`` requests.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx

if TYPE_CHECKING:
    from collections.abc import Callable

QUESTIONS = (
    "how is memory measured",
    "what happens at critical pressure",
    "which lane runs blocking io",
    "what does the prometheus collector do",
    "how are idle sessions evicted",
    "when does load shedding answer 503",
    "what is the working set",
    "how does hysteresis work",
)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class LoadStats:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    answered: list[tuple[float, int]] = field(default_factory=list)  # (time.time(), status)
    ok: int = 0
    shed: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)  # "HTTP 500", "ReadTimeout"

    @property
    def requests(self) -> int:
        """Requests sent and answered (or failed)."""
        return self.ok + self.shed + self.errors

    def record(self, status: int | None, seconds: float, error: str | None = None) -> None:
        """Count one request: 2xx ok, 503 shed, anything else (or none) an error."""
        self.answered.append((time.time(), status if status is not None else 0))
        if status is not None and 200 <= status < 300:
            self.ok += 1
            self.latencies.append(seconds)
        elif status == 503:
            self.shed += 1
        else:
            self.errors += 1
            kind = error if status is None else f"HTTP {status}"
            kind = kind or "no response"
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def client_loop(
    client: httpx.AsyncClient, stats: LoadStats, deadline: float, seed: int
) -> None:
    """Ask questions (and now and then index a document) until *deadline*."""
    rng = random.Random(seed)
    while anyio.current_time() < deadline:
        conversation = f"conversation-{rng.randrange(48)}"
        if rng.random() < 0.05:
            request = client.post(
                "/documents", json={"texts": [f"note {rng.random()} about memory pressure"]}
            )
        else:
            question = f"{rng.choice(QUESTIONS)} #{rng.randrange(200)}"
            request = client.post(
                "/ask", json={"conversation_id": conversation, "question": question}
            )
        started = time.perf_counter()
        error: str | None = None
        try:
            response = await request
            status: int | None = response.status_code
        except httpx.HTTPError as exc:
            status, error = None, type(exc).__name__
        stats.record(status, time.perf_counter() - started, error)


async def read_stream(
    client: httpx.AsyncClient, on_snapshot: Callable[[dict[str, object]], None]
) -> None:
    """Read /metrics/stream and hand each snapshot to *on_snapshot* until cancelled."""
    async with client.stream("GET", "/metrics/stream", timeout=None) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                on_snapshot(json.loads(line[6:]))
