"""
A small RAG-style service kept inside its memory budget by resource-supervisor.

Run it::

    python examples/fastapi_rag_service.py --port 8000
    curl -s localhost:8000/ask -H 'content-type: application/json' \\
        -d '{"conversation_id": "c1", "question": "how is memory measured?"}'
    curl -s localhost:8000/health/resources
    curl -sN localhost:8000/metrics/stream        # Server-Sent Events, one per sample

The pipeline, written so it also runs without a web framework
(see ``examples/asyncio_pipeline.py``):

* an in-memory document store;
* "embed" is CPU-bound: a deterministic, hash-based toy embedding computed in the
  supervisor's process lane (``run_in_process``, ``map_in_processes``);
* "retrieve" is blocking I/O (a vector store client would block here) and runs in
  the thread lane (``run_in_thread``);
* an embedding cache that is a cleanup handler: normal cleanup halves it, aggressive
  cleanup empties it; its ``ballast`` lets a demo make memory grow on purpose;
* one session per conversation (``sup.sessions.session(conversation_id)``), counted
  in ``active_sessions_rag`` and evicted when idle.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import mmap
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from resource_supervisor import Supervisor, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    from resource_supervisor import CleanupRequest, SupervisorSettings

DIMENSIONS = 64
HASH_ROUNDS = 300  # CPU work per token: makes "embed" worth a worker process
PAGE = mmap.PAGESIZE

SAMPLE_DOCUMENTS = (
    "Memory percent is measured against the effective limit: the smaller of host memory "
    "and the cgroup limit.",
    "The working set is cgroup memory usage minus the inactive file cache.",
    "At WARNING the supervisor runs normal cleanup; at CRITICAL aggressive cleanup.",
    "Levels go back down only below the threshold minus the hysteresis.",
    "Cleanup handlers run concurrently, each under its own timeout.",
    "The thread lane runs blocking I/O under its own capacity limiter.",
    "The process lane runs CPU-bound work in worker processes that start lazily.",
    "A dead worker fails only the call it was running; queued calls run on a replacement.",
    "At CRITICAL the process lane refuses new work beyond its queue limit.",
    "Every subscriber has a bounded buffer; a slow one loses its oldest snapshots.",
    "Sessions idle longer than their time to live are evicted by cleanup.",
    "The Prometheus collector formats the latest snapshot and never samples.",
    "Load shedding answers 503 with Retry-After while memory pressure is critical.",
    "Pressure stall information tells how long tasks waited for memory.",
    "Batch sizes shrink when available memory is low.",
    "Settings come from the resource_management section of a YAML file.",
    "Environment variables prefixed RESOURCE_SUPERVISOR_ override the YAML file.",
    "The sampler keeps procfs and cgroup files open and reads them with pread.",
    "GPU memory is read through NVML when a driver is present.",
    "A Dask cluster can run the process lane when a service outgrows one machine.",
)


def embed(text: str) -> tuple[float, ...]:
    """
    Embed *text* as a unit vector: a deterministic toy, hash-based and CPU-bound.

    Module-level so that worker processes can import it by name.

    Args:
        text: Any text.

    Returns:
        A vector of :data:`DIMENSIONS` floats with norm 1 (or all zeros for no words).
    """
    vector = [0.0] * DIMENSIONS
    for token in text.lower().split():
        digest = token.strip(".,;:!?()").encode()
        for _ in range(HASH_ROUNDS):
            digest = hashlib.sha256(digest).digest()
        for i in range(0, 32, 2):
            vector[digest[i] % DIMENSIONS] += 1.0 if digest[i + 1] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return tuple(x / norm for x in vector) if norm else tuple(vector)


@dataclass(frozen=True, slots=True)
class Document:
    """A stored document and its embedding."""

    doc_id: int
    text: str
    vector: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """What :meth:`RagPipeline.ask` returns."""

    conversation_id: str
    question: str
    sources: tuple[str, ...]
    scores: tuple[float, ...]
    cached: bool


class DocumentStore:
    """An in-memory vector store; its methods block, as a network client's would."""

    def __init__(self, *, max_documents: int = 5000, latency: float = 0.002) -> None:
        self._docs: list[Document] = []
        self._lock = threading.Lock()
        self._max = max_documents
        self._latency = latency
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, items: Iterable[tuple[str, tuple[float, ...]]]) -> int:
        """Store texts with their vectors (blocking); the oldest go beyond the cap."""
        with self._lock:
            added = 0
            for text, vector in items:
                self._docs.append(Document(self._next_id, text, vector))
                self._next_id += 1
                added += 1
            del self._docs[: max(0, len(self._docs) - self._max)]
            return added

    def search(self, vector: Sequence[float], k: int) -> list[tuple[float, Document]]:
        """Return the *k* nearest documents by cosine similarity (blocking)."""
        time.sleep(self._latency)  # the round trip of a real vector store
        with self._lock:
            docs = list(self._docs)
        scored = [(sum(a * b for a, b in zip(vector, d.vector, strict=True)), d) for d in docs]
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return scored[:k]


class EmbeddingCache:
    """
    Query embeddings by text, bounded; a cleanup handler of the supervisor.

    Normal cleanup drops the ballast and the older half of the entries; aggressive
    cleanup drops everything. ``grow()`` adds ballast: memory a demo allocates on
    purpose to cross a threshold (anonymous mappings, returned to the OS on cleanup).
    """

    def __init__(self, max_items: int = 10_000) -> None:
        self._items: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._max = max_items
        self._ballast: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.cleanups = 0

    def get(self, key: str) -> tuple[float, ...] | None:
        """Return the cached vector, or ``None``."""
        with self._lock:
            vector = self._items.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: str, vector: tuple[float, ...]) -> None:
        """Cache *vector*; the least recently used entry goes beyond the bound."""
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def grow(self, nbytes: int) -> int:
        """Allocate and touch *nbytes* of ballast (blocking: run it in a thread)."""
        block = mmap.mmap(-1, nbytes)
        for offset in range(0, nbytes, PAGE):
            block[offset] = 1  # touch every page so it is really resident
        with self._lock:
            self._ballast.append(block)
            return self.ballast_bytes

    @property
    def ballast_bytes(self) -> int:
        """Bytes of ballast held."""
        return sum(len(block) for block in self._ballast)

    async def cleanup(self, request: CleanupRequest) -> None:
        """
        Free memory: see the class docstring.

        Cancellation:
            Nothing is awaited: the cache is trimmed before any cancellation.
        """
        with self._lock:
            ballast, self._ballast = self._ballast, []
            if request.aggressive:
                self._items.clear()
            else:
                for _ in range(len(self._items) // 2):
                    self._items.popitem(last=False)
            self.cleanups += 1
        for block in ballast:
            block.close()

    def metrics(self) -> dict[str, int]:
        """Counters for the supervisor's ``rag`` metrics provider."""
        return {
            "cache_items": len(self._items),
            "cache_ballast_bytes": self.ballast_bytes,
            "cache_hits_total": self.hits,
            "cache_cleanups_total": self.cleanups,
        }


class RagPipeline:
    """
    Embed (process lane), retrieve (thread lane), with a cache and sessions.

    Args:
        supervisor: The running supervisor.
        top_k: Documents returned per question.
    """

    def __init__(self, supervisor: Supervisor, *, top_k: int = 3) -> None:
        self.sup = supervisor
        self.store = DocumentStore()
        self.cache = EmbeddingCache()
        self.top_k = top_k
        self.answers = 0
        self._unregister: list[Callable[[], None]] = []

    def attach(self) -> None:
        """Register the cache as a cleanup handler and the ``rag`` metrics provider."""
        self._unregister.append(self.sup.register_cleanup(self.cache, name="rag_cache"))
        self.sup.register_metrics_provider("rag", self.metrics)
        self._unregister.append(lambda: self.sup.unregister_metrics_provider("rag"))

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        while self._unregister:
            self._unregister.pop()()

    def metrics(self) -> dict[str, int]:
        """The ``rag_*`` metrics of each snapshot."""
        return {"documents": len(self.store), "answers_total": self.answers, **self.cache.metrics()}

    async def add_documents(self, texts: Sequence[str]) -> int:
        """
        Embed *texts* in worker processes (in chunks) and store them.

        Cancellation:
            Chunks in flight are dropped; documents already stored stay.
        """
        vectors = [v async for v in self.sup.executors.map_in_processes(embed, texts)]
        return await self.sup.executors.run_in_thread(
            self.store.add, zip(texts, vectors, strict=True)
        )

    async def ask(self, conversation_id: str, question: str) -> Answer:
        """
        Answer *question* within the conversation's session.

        Cancellation:
            The session is released (kept open for the next question); an embedding
            already running in a worker finishes there and is discarded.
        """
        async with self.sup.sessions.session(conversation_id):
            vector = self.cache.get(question)
            cached = vector is not None
            if vector is None:
                vector = await self.sup.executors.run_in_process(embed, question)
                self.cache.put(question, vector)
            hits = await self.sup.executors.run_in_thread(self.store.search, vector, self.top_k)
        self.answers += 1
        return Answer(
            conversation_id,
            question,
            tuple(doc.text for _, doc in hits),
            tuple(round(score, 4) for score, _ in hits),
            cached,
        )


# -- the web part ------------------------------------------------------------------
# Module level so FastAPI can resolve the (postponed) annotations of the endpoints;
# optional so that the pipeline above also runs without FastAPI installed.
try:
    from fastapi import Depends, FastAPI, Request
    from pydantic import BaseModel, Field

    from resource_supervisor.integrations.fastapi import (
        LoadSheddingMiddleware,
        create_router,
        supervised_lifespan,
    )
except ImportError:  # the web extra is missing: create_app() says so
    HAVE_FASTAPI = False
else:
    HAVE_FASTAPI = True

    class AskBody(BaseModel):
        """A question within a conversation."""

        conversation_id: str = Field(min_length=1, max_length=128)
        question: str = Field(min_length=1, max_length=2000)

    class DocumentsBody(BaseModel):
        """Texts to index."""

        texts: list[str] = Field(min_length=1, max_length=1000)

    class GrowBody(BaseModel):
        """How much ballast to allocate."""

        mib: int = Field(ge=1, le=4096)

    def pipeline_of(request: Request) -> RagPipeline:
        """Dependency: the app's pipeline."""
        pipeline: RagPipeline = request.app.state.pipeline
        return pipeline

    PipelineDep = Annotated[RagPipeline, Depends(pipeline_of)]


def create_app(
    settings: SupervisorSettings | None = None,
    *,
    supervisor_factory: Callable[[SupervisorSettings], Supervisor] = Supervisor,
) -> FastAPI:
    """
    Build the FastAPI app: supervised lifespan, load shedding, resource routes, RAG.

    Args:
        settings: Supervisor settings; ``None`` loads defaults and environment.
        supervisor_factory: Builds the supervisor from the settings (the demo passes
            one that measures against its own memory budget).

    Returns:
        The app; ``app.state.pipeline`` is the :class:`RagPipeline` once started.

    Raises:
        ImportError: Without the ``[fastapi]`` extra.
    """
    if not HAVE_FASTAPI:
        raise ImportError('the web service needs: pip install "resource-supervisor[fastapi]"')

    @contextlib.asynccontextmanager
    async def rag_lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipeline = RagPipeline(app.state.supervisor)
        pipeline.attach()
        await pipeline.add_documents(SAMPLE_DOCUMENTS)
        app.state.pipeline = pipeline
        try:
            yield
        finally:
            pipeline.detach()

    app = FastAPI(
        title="RAG service",
        lifespan=supervised_lifespan(
            settings, inner=rag_lifespan, supervisor_factory=supervisor_factory
        ),
    )
    app.add_middleware(LoadSheddingMiddleware)
    app.include_router(create_router())

    @app.post("/ask")
    async def ask(body: AskBody, pipeline: PipelineDep) -> dict[str, object]:
        answer = await pipeline.ask(body.conversation_id, body.question)
        return {
            "conversation_id": answer.conversation_id,
            "sources": answer.sources,
            "scores": answer.scores,
            "cached": answer.cached,
        }

    @app.post("/documents")
    async def add_documents(body: DocumentsBody, pipeline: PipelineDep) -> dict[str, int]:
        added = await pipeline.add_documents(body.texts)
        return {"added": added, "documents": len(pipeline.store)}

    @app.post("/demo/grow")
    async def grow(body: GrowBody, pipeline: PipelineDep) -> dict[str, int]:
        """Allocate cache ballast: for demonstrations of pressure handling only."""
        held = await pipeline.sup.executors.run_in_thread(pipeline.cache.grow, body.mib * 2**20)
        return {"ballast_bytes": held}

    @app.get("/stats")
    async def stats(pipeline: PipelineDep) -> dict[str, int]:
        return pipeline.metrics()

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", help="YAML settings (resource_management: section)")
    args = parser.parse_args(argv)
    app = create_app(load_settings(args.config))
    # Bounded graceful shutdown: open /metrics/stream clients must not hold it forever.
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
