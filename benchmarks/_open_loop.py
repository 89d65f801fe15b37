"""
An open-loop HTTP load generator on raw asyncio sockets (loopback only).

Covers: :func:`open_loop` (requests sent at a fixed arrival rate whatever the
server does, each with a client timeout, over a pool of keep-alive connections)
and :func:`closed_loop` (a few clients back to back, to find the capacity).
Latency is measured from each request's *scheduled* send time, so a generator
that falls behind cannot hide the server's queue (no coordinated omission).

The connections a phase can need are opened before it starts, so that no request's
latency includes a TCP handshake accepted by a busy event loop (the unloaded
latency is measured on an open connection too); in an earlier run the few requests
that opened a connection during an overload phase took up to 30 ms longer than
any other and set its p99.

Rates count only answers that arrive inside the measured window
(:func:`window_rate`, :func:`steady_rate`): an open-loop phase waits for its
stragglers (their latencies count), but the answers a server delivers after the
phase ended are not goodput of the phase, or a server that queues without bound
would be credited with its backlog (at 10 s phases and 16 calls queued, 12 %).
Closed-loop clients that start together finish in bunches (under processor
sharing, four calls started at once end at once), so the closed-loop rate starts
counting only once every client has had one answer.
Does not cover: the servers (:mod:`benchmarks._admission_app`) or the report
(:mod:`benchmarks.admission`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

__all__ = ("PhaseResult", "closed_loop", "open_loop", "steady_rate", "window_rate")


@dataclasses.dataclass(slots=True)
class PhaseResult:
    """What one load phase measured."""

    seconds: float
    sent: int = 0
    ok_latencies_ms: list[float] = dataclasses.field(default_factory=list)
    rejected: int = 0
    """503 and 429 answers."""
    timeouts: int = 0
    errors: int = 0
    outstanding: list[int] = dataclasses.field(default_factory=list)
    """Requests in flight seen at each send."""
    finished: list[float] = dataclasses.field(default_factory=list)
    """``perf_counter`` times at which the 200 answers arrived, in order."""
    window_start: float = math.nan
    """``perf_counter`` time the goodput window opens (open loop)."""
    clients: int = 0
    """Back-to-back clients (closed loop); 0 for an open-loop phase."""

    @property
    def goodput(self) -> float:
        """
        Successful answers per second: open loop, those that arrived inside the
        window (:func:`window_rate`); closed loop, :attr:`throughput`.
        """
        if self.clients:
            return self.throughput
        return window_rate(self.finished, self.window_start, self.seconds)

    @property
    def throughput(self) -> float:
        """Closed loop: the steady completion rate (:func:`steady_rate`)."""
        return steady_rate(self.finished, max(1, self.clients))


def window_rate(finished: list[float], start: float, seconds: float) -> float:
    """
    Answers per second that arrived in ``[start, start + seconds)``. Pure.

    Args:
        finished: Arrival times of the answers (any order).
        start: When the window opens; for an open-loop phase, the first send plus
            the unloaded latency (the earliest the first answer can arrive).
        seconds: The window's length, the phase's sending time.

    Returns:
        The rate; ``nan`` when *start* is not known.
    """
    if math.isnan(start) or seconds <= 0:
        return math.nan
    end = start + seconds
    return sum(1 for t in finished if start <= t < end) / seconds


def steady_rate(finished: list[float], clients: int) -> float:
    """
    The completion rate of *clients* back-to-back clients, from sorted answer times. Pure.

    Counted from the answer at which every client has had one (index
    ``clients - 1``) to the last: clients that start together finish their first
    calls together, and counting that first bunch over the span that follows it
    overstates the rate by up to ``(clients - 1) / n`` for *n* answers.

    Args:
        finished: Answer times, sorted.
        clients: How many clients ran.

    Returns:
        Answers per second; ``nan`` with too few answers to tell.
    """
    first = clients - 1
    if len(finished) < clients + 1 or finished[-1] <= finished[first]:
        return math.nan
    return (len(finished) - 1 - first) / (finished[-1] - finished[first])


class _Pool:
    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle:
            return self._idle.pop()
        return await asyncio.open_connection("127.0.0.1", self._port)

    async def fill(self, count: int) -> None:
        """Open *count* connections before the phase, as a client with a pool does."""
        conns = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", self._port) for _ in range(count))
        )
        self._idle.extend(conns)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._idle.append(conn)

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _request(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str
) -> tuple[int, bool]:
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


async def open_loop(
    port: int,
    rate: float,
    seconds: float,
    *,
    client_timeout: float,
    settle: float = 0.0,
    connections: int = 0,
    path: str = "/work",
) -> PhaseResult:
    """
    Send ``rate`` requests per second for *seconds*, each bounded by *client_timeout*.

    Args:
        port: The server's port on 127.0.0.1.
        rate: Requests per second.
        seconds: How long to send.
        client_timeout: Seconds a request may take before the client gives up.
        settle: Where the goodput window opens after the first send, in seconds
            (the unloaded latency: no answer can come earlier).
        connections: Keep-alive connections opened before the first send; more
            are opened during the phase when all are busy.
        path: The path requested.

    Returns:
        The phase's counts, the latencies (ms) of all 200 answers, and goodput
        counted over the answers inside the window.
    """
    result = PhaseResult(seconds)
    pool = _Pool(port)
    in_flight = 0

    async def one(scheduled: float) -> None:
        nonlocal in_flight
        in_flight += 1
        conn = None
        try:
            async with asyncio.timeout(client_timeout):
                conn = await pool.get()
                status, keep = await _request(conn, path)
        except TimeoutError:
            result.timeouts += 1
            if conn is not None:
                conn[1].close()
            return
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            result.errors += 1
            if conn is not None:
                conn[1].close()
            return
        finally:
            in_flight -= 1
        if keep:
            pool.put(conn)
        else:
            conn[1].close()
        if status == 200:
            done = time.perf_counter()
            result.ok_latencies_ms.append((done - scheduled) * 1e3)
            result.finished.append(done)
        elif status in (429, 503):
            result.rejected += 1
        else:
            result.errors += 1

    interval = 1.0 / rate
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    await pool.fill(connections)
    start = time.perf_counter()
    result.window_start = start + settle
    try:
        for i in range(total):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            result.outstanding.append(in_flight)
            task = asyncio.create_task(one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
        if tasks:
            await asyncio.wait(set(tasks))
    finally:
        for task in tasks:
            task.cancel()
        pool.close()
    return result


async def closed_loop(
    port: int, clients: int, seconds: float, *, path: str = "/work"
) -> PhaseResult:
    """
    Run *clients* back-to-back clients for *seconds*.

    Returns:
        The counts and latencies of the calls that finished within the window;
        ``goodput`` is the throughput they reached.
    """
    result = PhaseResult(seconds, clients=clients)
    end = time.perf_counter() + seconds

    async def client() -> None:
        conn = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                sent = time.perf_counter()
                status, _ = await _request(conn, path)
                done = time.perf_counter()
                if done > end:
                    break  # finished after the window: counting it would inflate the rate
                result.sent += 1
                if status == 200:
                    result.ok_latencies_ms.append((done - sent) * 1e3)
                    result.finished.append(done)
                else:
                    result.errors += 1
        finally:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.finished.sort()
    return result
