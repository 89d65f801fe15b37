"""
Server-Sent Events of snapshots for ``/metrics/stream``: bounded, and cheap per client.

Covers: :class:`StreamHub`, one per router, which caps the concurrent streams
(the excess is answered at once with 503 or 429 and ``Retry-After``, and counted in
the supervisor's ``stream_refused_total``) and encodes each snapshot once for every
stream; and :class:`SnapshotStream`, the response of one client. Does not cover: the
routes (:mod:`resource_supervisor.integrations.fastapi`) or the broadcast itself
(:mod:`resource_supervisor._streams`).

Why: encoding a snapshot as JSON costs more than everything else a stream does per
event (256 streams: 0.36x the loop time once shared, ``benchmarks/event_streams.py``),
and without a cap every client costs a task pair, a subscription and a connection's
buffers for as long as it stays: 2,000 clients grew a uvicorn by 61 MiB and held
``/health/resources`` for 6 s. With the cap, a client over it costs one short response;
under it, an event costs one bytes concatenation and one ``send`` per client.

Shutdown: uvicorn never tells a response that the server is stopping; after
``timeout_graceful_shutdown`` it cancels the request tasks, and a response that let
that cancellation out would be logged as "Exception in ASGI application" with its
traceback, once per open stream. A stream cancelled that way (by the server, not by
an anyio cancel scope of the app) ends its body cleanly and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from typing import TYPE_CHECKING, Final, Literal

import anyio
from fastapi.responses import JSONResponse, Response

from .._snapshot import PressureLevel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.types import Message, Receive, Scope, Send

    from .._snapshot import MetricsSnapshot, MetricValue
    from .._supervisor import Supervisor

__all__ = ("DEFAULT_MAX_STREAMS", "SnapshotStream", "StreamHub", "snapshot_to_json")

DEFAULT_MAX_STREAMS: Final = 256
"""Concurrent ``/metrics/stream`` clients a router serves by default."""

_KEEP_ALIVE: Final = b": keep-alive\n\n"


def snapshot_to_json(snapshot: Mapping[str, MetricValue]) -> dict[str, MetricValue]:
    """
    Convert a snapshot to JSON-safe values. Pure.

    Args:
        snapshot: A snapshot (or any mapping of key to value).

    Returns:
        The same keys with the level as its int; NaN and infinities, which JSON
        cannot carry, are left out.
    """
    out: dict[str, MetricValue] = {}
    for key, value in snapshot.items():
        if isinstance(value, PressureLevel):
            out[key] = int(value)
        elif isinstance(value, float) and not math.isfinite(value):
            continue
        else:
            out[key] = value
    return out


def _encode(snapshot: Mapping[str, MetricValue]) -> bytes:
    """The event of *snapshot* after its ``id:`` line, encoded once for all streams."""
    data = json.dumps(snapshot_to_json(snapshot), separators=(",", ":"))
    return f"event: snapshot\ndata: {data}\n\n".encode()


class StreamHub:
    """
    What the event streams of one router share: the cap and the encoded events.

    Args:
        max_streams: Streams served at once; one more is refused.
        refused_status: The status of a refusal, 503 or 429.
        retry_after: ``Retry-After`` seconds of a refusal (rounded up, at least 1).
        buffer: Snapshots buffered per stream; as many encoded events are kept
            (plus the newest), so a slow stream still finds its event encoded.
        heartbeat: Seconds between keep-alive comments on a quiet stream.

    Raises:
        ValueError: If *max_streams* or *buffer* is below 1, *heartbeat* or
            *retry_after* is not positive, or *refused_status* is neither 503 nor 429.
    """

    __slots__ = ("_active", "_encoded", "buffer", "heartbeat", "max_streams", "refusal")

    def __init__(
        self,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        refused_status: Literal[503, 429] = 503,
        retry_after: float = 5.0,
        buffer: int = 16,
        heartbeat: float = 15.0,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        if refused_status not in (503, 429):
            raise ValueError(f"refused_status must be 503 or 429, got {refused_status}")
        if not retry_after > 0:
            raise ValueError(f"retry_after must be positive, got {retry_after}")
        if buffer < 1:
            raise ValueError(f"stream_buffer must be at least 1, got {buffer}")
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat}")
        self.max_streams = max_streams
        self.buffer = buffer
        self.heartbeat = heartbeat
        self.refusal = (refused_status, str(max(1, math.ceil(retry_after))))
        self._active = 0
        self._encoded: deque[tuple[MetricsSnapshot, bytes]] = deque(maxlen=buffer + 1)

    def event(self, snapshot: MetricsSnapshot, event_id: int) -> bytes:
        """
        Return the SSE event for *snapshot*, encoding the snapshot only the first time
        any stream asks for it.

        Args:
            snapshot: A published snapshot (compared by identity).
            event_id: The ``id:`` of the event on this stream.

        Returns:
            The event's bytes.
        """
        data = self._encoded_data(snapshot)
        if data is None:
            data = _encode(snapshot)
            self._encoded.append((snapshot, data))
        return b"id: %d\n" % event_id + data

    def _encoded_data(self, snapshot: MetricsSnapshot) -> bytes | None:
        # Newest first: a stream that keeps up asks for the latest snapshot.
        for known, data in reversed(self._encoded):
            if known is snapshot:
                return data
        return None

    def admit(self) -> bool:
        """Take a stream slot if one is free (sync: no await between check and take)."""
        if self._active >= self.max_streams:
            return False
        self._active += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`admit`."""
        self._active -= 1


class SnapshotStream(Response):
    """
    The response of one ``/metrics/stream`` client: snapshots as Server-Sent Events.

    Over the hub's cap it answers the refusal at once (and asks the client to close
    the connection). Otherwise it holds one subscription, closed as soon as the
    client disconnects (a task listens for ``http.disconnect``), when *limit* events
    were sent, when the supervisor exits, or when the server cancels the request at
    shutdown. A comment line every ``heartbeat`` seconds keeps proxies from timing
    the connection out.

    Args:
        hub: The router's hub.
        supervisor: The supervisor whose snapshots to send.
        limit: Events to send before ending; ``None`` for no end.
    """

    media_type: str | None = "text/event-stream"

    def __init__(self, hub: StreamHub, supervisor: Supervisor, *, limit: int | None) -> None:
        super().__init__(
            status_code=200, headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )
        # An endless body has no length: drop the "content-length: 0" of the empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._hub = hub
        self._sup = supervisor
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """
        Serve the stream, or the refusal when the cap is reached.

        Cancellation:
            An anyio cancel scope of the app ends the stream and propagates. A
            cancellation of the request task itself (uvicorn's, after
            ``timeout_graceful_shutdown``) ends the body cleanly and returns, so the
            server logs no traceback. Either way the subscription is closed and the
            slot given back.
        """
        hub = self._hub
        if not hub.admit():
            self._sup._count_refused_stream()
            status, retry_after = hub.refusal
            refusal = JSONResponse(
                {"detail": f"too many event streams (at most {hub.max_streams}); retry later"},
                status_code=status,
                headers={"Retry-After": retry_after, "Connection": "close"},
            )
            await refusal(scope, receive, send)
            return
        try:
            await self._serve(receive, send)
        except anyio.get_cancelled_exc_class():
            if anyio.current_effective_deadline() == -math.inf:
                raise  # an anyio scope of the app was cancelled: it catches this
            # The task itself was cancelled (the server gave up on the response):
            # the body was ended in _serve; stop here without a traceback.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            hub.release()

    async def _serve(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch_disconnect)
                with contextlib.suppress(OSError):  # the client went away mid-write
                    await self._send_events(send)
                tg.cancel_scope.cancel()
        finally:
            with contextlib.suppress(OSError), anyio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_events(self, send: Send) -> None:
        hub = self._hub
        sent = 0
        async with self._sup.subscribe(buffer=hub.buffer) as stream:
            # The current snapshot first, so a client sees data at once.
            snapshot: MetricsSnapshot | None = self._sup.metrics
            while True:
                if snapshot is not None:
                    sent += 1
                    body = hub.event(snapshot, sent)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    if self._limit is not None and sent >= self._limit:
                        return
                snapshot = None
                with anyio.move_on_after(hub.heartbeat):
                    try:
                        snapshot = await stream.receive()
                    except anyio.EndOfStream:
                        return  # the supervisor exited
                if snapshot is None:
                    message: Message = {
                        "type": "http.response.body",
                        "body": _KEEP_ALIVE,
                        "more_body": True,
                    }
                    await send(message)
