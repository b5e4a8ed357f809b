#!/usr/bin/env python3
"""Server benchmark: webhook ingest throughput, and POST → gRPC stream latency.

Starts ``python -m gitstafette server`` itself (or, with ``--url``/``--grpc``, measures one that runs),
then:

1. **Ingest throughput.** ``-n`` webhooks (GitHub's push fixture, ~7 KB, each with its own
   ``X-GitHub-Delivery``) sent by ``-c`` concurrent senders, each on one keep-alive connection, as fast as
   the server answers. Reports accepted (201) per second, status counts, the latency of the POSTs, the
   CPU the sender and the server used, and (SQLite) whether every 201 is in the database file.
2. **POST → stream latency.** A gRPC stream is opened (``StreamWebhookEvents``, acknowledging each event;
   or the legacy ``FetchWebhookEvents``), then ``-m`` webhooks are posted one at a time, each after the
   previous one arrived on the stream. Reports the time from just before the POST was written to the
   moment the event came out of the stream.

Prints a table and one JSON line, and writes the JSON to ``bench/results/``. See ``bench/README.md``.

The HTTP sender is deliberately raw: pre-built HTTP/1.1 requests written on persistent asyncio (uvloop)
connections, only the status line and Content-Length of each response parsed, so that on a 2-core
machine shared with the server the sender costs as little CPU as possible. ``--procs`` splits it into
several processes.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = ROOT / "tests" / "fixtures" / "github" / "push.0.json"
RESULTS = Path(__file__).resolve().parent / "results"

GOAL_ACCEPTED_PER_S = 2000.0
GOAL_STREAM_P50_MS = 1.0

#: A request whose answer takes longer than this counts as an error ("timeout").
REQUEST_TIMEOUT_S = 30.0
#: Reconnects one sender connection may make before it gives up.
MAX_RECONNECTS = 20
#: A keep-alive connection idle this long is replaced before the next request (uvicorn closes at 5 s).
IDLE_RECONNECT_S = 2.0
#: Index offsets of the delivery ids of measure 2 (the marker is 0, measured webhooks 1…).
BASELINE_OFFSET = 1_000_000


# ---------------------------------------------------------------------------------------------------
# Small helpers


def percentiles(values: list[float] | array.array[float]) -> dict[str, float | None]:
    """p50/p90/p99/max (nearest rank) and mean, in milliseconds, of latencies in seconds."""
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, -(-int(p * n * 1000) // 1000) - 1))] * 1000

    return {
        "n": n,
        "p50_ms": round(rank(0.50), 3),
        "p90_ms": round(rank(0.90), 3),
        "p99_ms": round(rank(0.99), 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(sum(ordered) / n * 1000, 3),
    }


def delivery_id(base: int, index: int) -> str:
    """A GUID-shaped delivery id, unique per run and index (so it can be recomputed from the index)."""
    return str(uuid.UUID(int=(base + index) % (1 << 128)))


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def proc_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) per thread of a process, keyed ``"main"`` or ``"<comm> <tid>"``."""
    threads: dict[str, float] = {}
    if not pid:
        return threads
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        threads["main" if int(tid) == pid else f"{comm} {tid}"] = (int(fields[11]) + int(fields[12])) / ticks
    return threads


def system_cpu() -> tuple[float, float, float]:
    """(busy, total, interrupt) CPU seconds of the whole machine so far, from /proc/stat.

    Interrupt time (irq + softirq: on loopback, much of the TCP work) is charged to no process.
    """
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0, 0.0
    values += [0] * (8 - len(values))
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / ticks, total / ticks, (values[5] + values[6]) / ticks


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole > 0 else None


class CpuWindow:
    """CPU used by the server (per thread) and by the whole machine between ``start()`` and ``stop()``."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.threads: dict[str, float] = {}
        self.system = (0.0, 0.0, 0.0)
        self.started = self.wall_s = 0.0
        self.threads_after: dict[str, float] = {}
        self.system_after = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self.threads, self.system, self.started = proc_cpu(self.pid), system_cpu(), time.perf_counter()

    def stop(self) -> None:
        self.threads_after, self.system_after = proc_cpu(self.pid), system_cpu()
        self.wall_s = time.perf_counter() - self.started

    def server(self, requests: int) -> dict[str, Any] | None:
        """Server CPU: total, its event-loop (main) thread, and the busiest other threads."""
        if not self.pid:
            return None
        deltas = {name: self.threads_after[name] - self.threads.get(name, 0.0) for name in self.threads_after}
        total = sum(deltas.values())
        main = deltas.pop("main", 0.0)
        others = sorted(((round(v, 3), k) for k, v in deltas.items() if v > 0.005), reverse=True)
        return {
            "cpu_s": round(total, 3),
            "cpu_pct": pct(total, self.wall_s),
            "main_thread_cpu_s": round(main, 3),
            "main_thread_pct": pct(main, self.wall_s),
            "other_threads_cpu_s": round(total - main, 3),
            "other_threads_pct": pct(total - main, self.wall_s),
            "busiest_other_threads": [{"thread": k, "cpu_s": v} for v, k in others[:6]],
            "us_per_request": round(1e6 * total / max(1, requests), 1),
        }

    def machine(self, accounted_s: float) -> dict[str, Any] | None:
        """The whole machine, and what ran besides the server and the sender (``accounted_s``)."""
        busy, capacity, interrupts = (
            after - before for after, before in zip(self.system_after, self.system, strict=True)
        )
        if capacity <= 0:
            return None
        others = max(0.0, busy - interrupts - accounted_s)
        return {
            "busy_pct_of_all_cores": pct(busy, capacity),
            # irq + softirq: mostly the kernel's side of the loopback TCP traffic, charged to no process.
            "interrupts_pct_of_one_core": pct(interrupts, self.wall_s),
            # Other processes (and py-spy): a large figure means the machine was not quiet.
            "others_cpu_s": round(others, 2) if self.pid else None,
            "others_pct_of_one_core": pct(others, self.wall_s) if self.pid else None,
        }


# ---------------------------------------------------------------------------------------------------
# The webhook request, as GitHub sends it, and a minimal HTTP/1.1 client


@dataclass(frozen=True)
class Webhook:
    """A pre-built HTTP/1.1 request with a hole for the delivery id."""

    head: bytes  # up to and including "X-GitHub-Delivery: "
    tail: bytes  # the rest of the header block, the blank line and the body
    repository_id: str
    body_bytes: int

    def request(self, delivery: str) -> bytes:
        return b"".join((self.head, delivery.encode("ascii"), self.tail))

    @classmethod
    def build(cls, fixture: Path, host: str, port: int, path: str, secret: str = "") -> Webhook:
        body = fixture.read_bytes()
        repository_id = str(json.loads(body)["repository"]["id"])
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "User-Agent: GitHub-Hookshot/044aadd",
            "Accept: */*",
            f"X-GitHub-Event: {fixture.name.split('.')[0]}",
            "X-GitHub-Hook-ID: 292430182",
            "X-GitHub-Hook-Installation-Target-Type: repository",
            f"X-GitHub-Hook-Installation-Target-ID: {repository_id}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        if secret:
            lines.append("X-Hub-Signature-256: sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())
        head = ("\r\n".join(lines) + "\r\nX-GitHub-Delivery: ").encode("latin-1")
        return cls(head, b"\r\n\r\n" + body, repository_id, len(body))


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: write a request, read the status and the body."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def connect(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_used = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; (status, body). Raises on a broken connection or a protocol error.

        A connection idle for longer than ``IDLE_RECONNECT_S`` is replaced first: servers close idle
        keep-alive connections (uvicorn after 5 s), and a request written as that happens would be lost.
        """
        if self.writer is not None and time.monotonic() - self.last_used > IDLE_RECONNECT_S:
            self.close()
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        if self.writer.transport.get_write_buffer_size() > 1 << 16:
            await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(head[at + 17 : end]))
        elif b"\r\ntransfer-encoding:" in lower:
            raise ValueError("chunked responses are not supported by the bench sender")
        else:
            body = b""
        if b"\r\nconnection: close" in lower:
            self.close()
        self.last_used = time.monotonic()
        return status, body


def run_loop(coro_factory: Callable[[], Any], use_uvloop: bool) -> Any:
    """Run a coroutine on uvloop when asked and installed, else on the standard loop."""
    if use_uvloop and has_uvloop():
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro_factory())
    return asyncio.run(coro_factory())


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Measure 1: ingest throughput. The sender runs in this process, or in --procs processes.


@dataclass
class SenderSpec:
    host: str
    port: int
    path: str
    fixture: str
    secret: str
    base: int  # delivery id base
    indices: list[int]  # the measured requests this sender sends, by global index
    warmup: list[int]  # warm-up requests (global indices), sent before the clock starts
    connections: int
    uvloop: bool
    timeout_s: float


@dataclass
class SenderResult:
    statuses: dict[int, int] = field(default_factory=dict)  # global index → status (0: transport error)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    finished: array.array[float] = field(default_factory=lambda: array.array("d"))  # perf_counter() of 201s
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    start: float = 0.0
    end: float = 0.0
    cpu_s: float = 0.0
    warmup_statuses: Counter[int] = field(default_factory=Counter)


async def _send(
    connection: HttpConnection,
    webhook: Webhook,
    spec: SenderSpec,
    work: Iterator[int],
    result: SenderResult,
    record: bool,
) -> None:
    """One sender: takes the next index from the shared iterator whenever its connection is free."""
    reconnects = 0
    for index in work:
        request = webhook.request(delivery_id(spec.base, index))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout_s):
                status, _ = await connection.exchange(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            connection.close()
            result.errors[type(exc).__name__] += 1
            status = 0
            reconnects += 1
            result.reconnects += 1
        if record:
            now = time.perf_counter()
            result.latencies.append(now - started)
            result.statuses[index] = status
            if status == 201:
                result.finished.append(now)
        else:
            result.warmup_statuses[status] += 1
        if reconnects > MAX_RECONNECTS:
            result.errors["gave-up"] += 1
            return


async def send_all(spec: SenderSpec, on_ready: Callable[[], None] | None) -> SenderResult:
    """Connect, warm up, call ``on_ready`` (the start line), send the measured requests."""
    webhook = Webhook.build(Path(spec.fixture), spec.host, spec.port, spec.path, spec.secret)
    result = SenderResult()
    connections = [HttpConnection(spec.host, spec.port) for _ in range(spec.connections)]
    await asyncio.gather(*(c.connect() for c in connections))
    # Warm-up: same connections, not measured (imports, the SQLite page cache, …).
    shared = iter(spec.warmup)
    await asyncio.gather(*(_send(c, webhook, spec, shared, result, False) for c in connections))
    if on_ready is not None:
        on_ready()
    cpu0 = self_cpu()
    result.start = time.perf_counter()
    shared = iter(spec.indices)  # one iterator, many consumers
    await asyncio.gather(*(_send(c, webhook, spec, shared, result, True) for c in connections))
    result.end = time.perf_counter()
    result.cpu_s = self_cpu() - cpu0
    for c in connections:
        c.close()
    return result


def _sender_process(spec: SenderSpec, control: Any) -> None:
    """Entry point of a sender process: warm up, say ready, wait for go, send, report."""

    def ready() -> None:
        control.send("ready")
        if not control.poll(120) or control.recv() != "go":
            raise SystemExit("no go from the parent within 120 s")

    try:
        control.send(run_loop(lambda: send_all(spec, ready), spec.uvloop))
    except BaseException as exc:  # report, never leave the parent waiting
        control.send(f"error: {exc!r}")
        raise


def _receive(pipe: Any, timeout: float, what: str) -> Any:
    if not pipe.poll(max(0.0, timeout)):
        raise RuntimeError(f"a sender process did not {what} within the time allowed")
    message = pipe.recv()
    if isinstance(message, str) and message.startswith("error"):
        raise RuntimeError(f"sender process: {message}")
    return message


def run_senders(specs: list[SenderSpec], phase_timeout: float, on_go: Callable[[], None]) -> list[SenderResult]:
    """One sender in this process, or one process per spec started together."""
    if len(specs) == 1:
        return [run_loop(lambda: send_all(specs[0], on_go), specs[0].uvloop)]
    ctx = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    try:
        for spec in specs:
            parent_end, child_end = ctx.Pipe()
            worker = ctx.Process(target=_sender_process, args=(spec, child_end), daemon=True)
            worker.start()
            pipes.append(parent_end)
            workers.append(worker)
        for pipe in pipes:
            _receive(pipe, 120, "get ready")
        on_go()
        for pipe in pipes:
            pipe.send("go")
        deadline = time.monotonic() + phase_timeout
        return [_receive(pipe, deadline - time.monotonic(), "finish") for pipe in pipes]
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()


def _sender_specs(args: argparse.Namespace, host: str, port: int, base: int) -> list[SenderSpec]:
    procs = max(1, min(args.procs, args.concurrency))
    measured = list(range(args.warmup, args.warmup + args.requests))
    warmup = list(range(args.warmup))
    return [
        SenderSpec(
            host=host,
            port=port,
            path=args.path,
            fixture=str(args.fixture),
            secret=args.secret,
            base=base,
            indices=measured[k::procs],
            warmup=warmup[k::procs],
            connections=args.concurrency // procs + (1 if k < args.concurrency % procs else 0),
            uvloop=not args.no_uvloop,
            timeout_s=REQUEST_TIMEOUT_S,
        )
        for k in range(procs)
    ]


def measure_ingest(args: argparse.Namespace, host: str, port: int, server_pid: int | None) -> dict[str, Any]:
    """Measure 1. Returns the figures, plus the set of delivery ids answered 201 (key ``_accepted_ids``)."""
    base = uuid.uuid4().int
    specs = _sender_specs(args, host, port, base)
    window = CpuWindow(server_pid)
    results = run_senders(specs, args.phase_timeout, window.start)
    window.stop()

    start, end = min(r.start for r in results), max(r.end for r in results)
    wall = end - start
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    warmup_statuses: Counter[int] = Counter()
    # 201s in each second of the run: shows stalls, and whether the rate drifts as the store grows.
    per_second = [0] * (int(wall) + 1)
    for r in results:
        statuses.update(r.statuses)
        latencies.extend(r.latencies)
        errors.update(r.errors)
        warmup_statuses.update(r.warmup_statuses)
        for at in r.finished:
            per_second[min(len(per_second) - 1, int(at - start))] += 1
    counts = Counter(statuses.values())
    sender_cpu = sum(r.cpu_s for r in results)
    server_cpu = window.server(len(statuses))
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "sender_processes": len(specs),
        "sender_loop": "uvloop" if specs[0].uvloop and has_uvloop() else "asyncio",
        "body_bytes": Webhook.build(Path(args.fixture), host, port, args.path).body_bytes,
        "warmup_requests": args.warmup,
        "warmup_statuses": {str(k): v for k, v in sorted(warmup_statuses.items())},
        "wall_s": round(wall, 4),
        "accepted": counts.get(201, 0),
        "accepted_per_s": round(counts.get(201, 0) / wall, 1) if wall else None,
        "answered_per_s": round(len(statuses) / wall, 1) if wall else None,
        "statuses": {str(k) if k else "error": v for k, v in sorted(counts.items())},
        "transport_errors": dict(errors),
        "reconnects": sum(r.reconnects for r in results),
        "latency": percentiles(latencies),
        "accepted_each_second": per_second,
        "sender_cpu_s": round(sender_cpu, 3),
        "sender_cpu_pct_of_one_core": pct(sender_cpu, wall),
        "sender_cpu_us_per_request": round(1e6 * sender_cpu / max(1, len(statuses)), 1),
        "server_cpu": server_cpu,
        "machine_cpu": window.machine(sender_cpu + (server_cpu or {}).get("cpu_s", 0.0)),
        "_accepted_ids": {delivery_id(base, i) for i, s in statuses.items() if s == 201},
    }


# ---------------------------------------------------------------------------------------------------
# Measure 2: POST → stream latency


class StreamProbe:
    """Posts webhooks one at a time and times their arrival on a gRPC stream (grpc.aio, standard loop)."""

    def __init__(self, args: argparse.Namespace, host: str, port: int, profiler: Callable[[], PySpy | None]) -> None:
        self.args = args
        self.webhook = Webhook.build(Path(args.fixture), host, port, args.path, args.secret)
        self.http = HttpConnection(host, port)
        self.profiler = profiler
        self.base = uuid.uuid4().int
        self.client_id = f"bench-{uuid.uuid4().hex[:8]}"
        #: delivery id → future resolved with the perf_counter() time the event came out of the stream
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.seen: Counter[str] = Counter()
        self.reader: asyncio.Task[None] | None = None
        self.call: Any = None
        self.spy: PySpy | None = None

    async def post(self, index: int) -> tuple[int, bytes, float]:
        """POST webhook ``index``: (status, body, perf_counter() just before the request was written)."""
        request = self.webhook.request(delivery_id(self.base, index))
        started = time.perf_counter()
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status, body = await self.http.exchange(request)
        return status, body, started

    def expect(self, index: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[delivery_id(self.base, index)] = future
        return future

    def arrived(self, delivery: str, at: float) -> None:
        future = self.waiting.pop(delivery, None)
        if future is not None and not future.done():
            future.set_result(at)

    async def arrival(self, future: asyncio.Future[float], timeout: float) -> float:
        """When the event of ``future`` came out of the stream; raises if the stream ended first."""
        assert self.reader is not None
        done, _ = await asyncio.wait({future, self.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        if self.reader in done:
            self.reader.result()  # raises what ended the stream
            raise RuntimeError("the stream ended before the event arrived")
        raise TimeoutError(f"the event did not arrive on the stream within {timeout} s")

    # -- the two streams --

    async def _read_acked(self) -> None:
        import grpc

        from gitstafette._proto import gitstafette_pb2 as pb

        while True:
            message = await self.call.read()
            at = time.perf_counter()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("kind")
            self.seen[kind] += 1
            if kind == "event":
                event = message.event
                self.seen["redeliveries"] += event.redelivery > 0
                self.arrived(event.webhook_event.event_id, at)
                ack = pb.Ack(repository_id=event.repository_id, sequence=event.sequence)
                await self.call.write(pb.StreamRequest(ack=ack))
                self.seen["acks"] += 1

    async def _read_legacy(self, stub: Any, after: int) -> None:
        from gitstafette._proto import gitstafette_pb2 as pb

        request = pb.WebhookEventsRequest(
            client_id=self.client_id, repository_id=self.webhook.repository_id, last_received_event_id=after
        )
        async for response in stub.FetchWebhookEvents(request):
            at = time.perf_counter()
            if not response.webhook_events:
                self.seen["heartbeat"] += 1
            for event in response.webhook_events:
                self.seen["event"] += 1
                self.arrived(event.event_id, at)

    async def subscribe(self, stub: Any) -> dict[str, Any]:
        """Open the stream and wait until a marker webhook posted now comes out of it.

        A client id seen for the first time starts at the oldest retained event, so on the acknowledged
        stream everything stored before (measure 1) is replayed first; the legacy stream resumes just
        before the marker instead.
        """
        from gitstafette._proto import gitstafette_pb2 as pb

        marker = self.expect(0)
        if self.args.stream == "acked":
            self.call = stub.StreamWebhookEvents()
            subscribe = pb.Subscribe(client_id=self.client_id, repository_ids=[self.webhook.repository_id])
            await self.call.write(pb.StreamRequest(subscribe=subscribe))
            self.reader = asyncio.create_task(self._read_acked())
        status, body, _ = await self.post(0)
        if status != 201:
            raise RuntimeError(f"the marker webhook was answered {status}: {body[:200]!r}")
        started = time.perf_counter()
        if self.reader is None:
            self.reader = asyncio.create_task(self._read_legacy(stub, int(json.loads(body)["sequence"]) - 1))
        await self.arrival(marker, self.args.phase_timeout)
        seconds = time.perf_counter() - started
        events = self.seen["event"] - 1
        return {
            "events": events,
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds, 1) if events and seconds else None,
        }

    # -- the measure --

    async def baseline(self) -> tuple[list[float], Counter[int]]:
        """One-at-a-time POSTs with no stream open: what the stream adds is the difference."""
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        for index in range(self.args.baseline):
            status, _, started = await self.post(BASELINE_OFFSET + index)
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
        return latencies, statuses

    async def samples(self) -> tuple[list[float], list[float], Counter[int]]:
        """(POST → stream, POST → 201, statuses) of the measured webhooks, sent one at a time."""
        to_stream: list[float] = []
        to_201: list[float] = []
        statuses: Counter[int] = Counter()
        deadline = time.monotonic() + self.args.phase_timeout
        for index in range(1, self.args.warmup_stream + self.args.messages + 1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"measure 2 did not finish within {self.args.phase_timeout} s")
            measured = index > self.args.warmup_stream
            if measured and self.spy is None:
                self.spy = self.profiler()  # profiles the measured webhooks only
            future = self.expect(index)
            status, _, started = await self.post(index)
            answered = time.perf_counter()
            if measured:
                statuses[status] += 1
            if status != 201:
                self.waiting.pop(delivery_id(self.base, index), None)
                continue
            at = await self.arrival(future, REQUEST_TIMEOUT_S)
            if measured:
                to_stream.append(at - started)
                to_201.append(answered - started)
            if self.args.gap_ms:
                await asyncio.sleep(self.args.gap_ms / 1000)
        return to_stream, to_201, statuses

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if self.call is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.call.done_writing()
            self.call.cancel()
        self.http.close()

    async def run(self, grpc_target: str) -> dict[str, Any]:
        import grpc

        from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(grpc_target) as channel:
            async with asyncio.timeout(15):
                await channel.channel_ready()
            try:
                baseline, baseline_statuses = await self.baseline()
                backlog = await self.subscribe(pb_grpc.GitstafetteStub(channel))
                to_stream, to_201, statuses = await self.samples()
                await asyncio.sleep(0.05)  # let the last acknowledgement go out before the stream closes
                profile = self.spy.stop() if self.spy is not None else None
                self.spy = None
            finally:
                if self.spy is not None:
                    self.spy.stop()
                await self.close()
        acked = self.args.stream == "acked"
        return {
            "rpc": "StreamWebhookEvents (acknowledged)" if acked else "FetchWebhookEvents (legacy)",
            "messages": self.args.messages,
            "warmup_messages": self.args.warmup_stream,
            "gap_ms": self.args.gap_ms,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "post_to_stream": percentiles(to_stream),
            "post_to_201": percentiles(to_201),
            "baseline_post_to_201_no_stream": percentiles(baseline),
            "baseline_statuses": {str(k): v for k, v in sorted(baseline_statuses.items())},
            "events_seen": self.seen["event"],
            "redeliveries_seen": self.seen["redeliveries"],
            "acks_sent": self.seen["acks"],
            "heartbeats_seen": self.seen["heartbeat"],
            "backlog_replayed_before_measuring": backlog,
            **({"py_spy": profile} if profile else {}),
        }


def measure_stream(
    args: argparse.Namespace,
    host: str,
    port: int,
    grpc_target: str,
    server_pid: int | None,
    profiler: Callable[[], PySpy | None],
) -> dict[str, Any]:
    window = CpuWindow(server_pid)
    window.start()
    figures: dict[str, Any] = asyncio.run(StreamProbe(args, host, port, profiler).run(grpc_target))
    window.stop()
    figures["server_cpu_whole_measure"] = window.server(figures["events_seen"])
    return figures


# ---------------------------------------------------------------------------------------------------
# The server under test


class ServerUnderTest:
    """``python -m gitstafette server`` started by the bench, on free loopback ports."""

    def __init__(self, store: str, log_level: str, extra: list[str]) -> None:
        self.store = store
        self.log_level = log_level
        self.extra = extra
        self.host = "127.0.0.1"
        self.http_port = 0
        self.grpc_port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=200)
        self.log_lines = 0
        self._drainer: threading.Thread | None = None
        self.exit_code: int | None = None
        self.stop_s: float | None = None

    def start(self, timeout: float = 30) -> None:
        # At --log-level warning the server does not log its ports, so they are chosen here; a port can
        # be taken between this probe and the server's bind, hence the retries.
        for _attempt in range(3):
            self.http_port, self.grpc_port = free_port(self.host), free_port(self.host)
            command = [sys.executable, "-m", "gitstafette", "server", "--host", self.host]
            command += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
            command += ["--store", self.store, "--log-level", self.log_level, *self.extra]
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT
            )
            self._drainer = threading.Thread(target=self._drain, daemon=True)
            self._drainer.start()
            if self._wait_ready(timeout):
                return
            if self.process.poll() is None:
                self.stop()
                raise RuntimeError("the server did not become ready:\n" + "".join(self.log))
            if self._drainer is not None:
                self._drainer.join(5)
            if "in use" not in "".join(self.log):
                break  # not a port taken meanwhile: trying again would fail the same way
        raise RuntimeError("the server exited during startup:\n" + "".join(self.log))

    def _drain(self) -> None:
        # Keep reading stderr so that the server never blocks on a full pipe (at info level it logs a
        # line per webhook); remember the last lines for error reports.
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.log_lines += 1

    def _wait_ready(self, timeout: float) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.host}:{self.http_port}/readyz", timeout=1).status_code == 200:
                    return True
            time.sleep(0.05)
        return False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, wait for the clean shutdown, SIGKILL if it takes longer than ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait(10)
            self.log.append(f"[bench] server did not stop within {timeout} s of SIGTERM: killed\n")
        self.stop_s = round(time.perf_counter() - started, 3)
        if self._drainer is not None:
            self._drainer.join(5)


def durability(db_path: str | None, repository_id: str, accepted: set[str]) -> dict[str, Any]:
    """Are all delivery ids answered 201 in the SQLite file, seen from another connection?"""
    if not db_path:
        return {"checked": False, "why": "no SQLite file to read (memory store, or --db not given)"}
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        query = "SELECT delivery_id FROM events WHERE repository_id = ?"
        stored = {d for (d,) in connection.execute(query, (repository_id,))}
    finally:
        connection.close()
    missing = accepted - stored
    return {
        "checked": True,
        "accepted_201": len(accepted),
        "found_in_db": len(accepted) - len(missing),
        "missing": len(missing),
        "missing_examples": sorted(missing)[:5],
    }


def server_counters(base_url: str) -> dict[str, float]:
    """``gitstafette_webhooks_received_total`` by outcome, from /metrics."""
    import httpx

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    counts: dict[str, float] = {}
    for labels, value in re.findall(r"^gitstafette_webhooks_received_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        outcome = re.search(r'outcome="([^"]+)"', labels)
        if outcome:  # summed over the other labels (repository, event)
            counts[outcome.group(1)] = counts.get(outcome.group(1), 0.0) + float(value)
    return counts


# ---------------------------------------------------------------------------------------------------
# py-spy (optional)


class PySpy:
    """``py-spy record`` of the server, summarised by function and by thread when stopped."""

    def __init__(self, pid: int, output: Path, rate: int) -> None:
        self.output = output
        self.rate = rate
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise RuntimeError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
        command = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads"]
        command += ["--output", str(output), "--nonblocking"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGINT)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        if not self.output.exists():
            return {"error": out[-2000:]}
        return summarise_collapsed(self.output, self.rate)


_ENTRY_PATH = re.compile(
    r"\((typer|click)/|<frozen runpy>|^<module> |\(gitstafette/(cli|__main__)\.py\)|\(asyncio/runners\.py\)"
    r"|^BaseEventLoop\.(run_forever|run_until_complete|_run_once) |^Thread\.(run|_bootstrap|_bootstrap_inner) "
    r"|^_worker \(concurrent/|^Handle\._run "
)


def summarise_collapsed(path: Path, rate: int, top: int = 20) -> dict[str, Any]:
    """Samples per thread, and top functions by own and by inclusive samples, of a collapsed-stack file.

    Inclusive counts ignore line numbers and leave out the entry path every stack starts with (the CLI,
    ``asyncio.run``, ``run_forever``, ``Thread.run``…), which says nothing.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        frames = frames[1:] if thread != "?" else frames
        total += count
        threads[thread] += count
        if frames:
            own[frames[-1]] += count
            for name in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
                inclusive[(thread, name)] += count
    useful: Counter[str] = Counter()
    for (_thread, name), count in inclusive.items():
        if not _ENTRY_PATH.search(name):
            useful[name] += count

    def table(counter: Counter[str], key: str) -> list[dict[str, Any]]:
        return [
            {key: f, "samples": c, "pct": pct(c, total), "est_busy_s": round(c / rate, 2)}
            for f, c in counter.most_common(top)
        ]

    return {
        "samples": total,
        "rate_hz": rate,
        "note": "idle (waiting) samples are not recorded: pct is of the busy samples of all threads together",
        "threads": table(threads, "thread"),
        "top_self": table(own, "frame"),
        "top_inclusive": table(useful, "frame"),
        "collapsed_file": str(path),
    }


# ---------------------------------------------------------------------------------------------------
# Report


def git_state() -> dict[str, Any]:
    """The commit measured, and which server sources differ from it (read-only git commands)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines() if line.strip()]
    return {"head": git("rev-parse", "--short", "HEAD") or None, "src_changed": changed}


def wait_quiet(max_wait_s: float, threshold_pct: float = 15.0) -> dict[str, Any]:
    """Wait (at most ``max_wait_s``) until the machine is nearly idle: other work skews every figure."""
    started = time.monotonic()
    while True:
        before = system_cpu()
        time.sleep(1.0)
        after = system_cpu()
        busy = pct(after[0] - before[0] - (after[2] - before[2]), after[1] - before[1]) or 0.0
        waited = time.monotonic() - started
        if busy <= threshold_pct or waited >= max_wait_s:
            return {"busy_pct_of_all_cores": busy, "waited_s": round(waited, 1), "quiet": busy <= threshold_pct}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        names = ("grpcio", "protobuf", "uvicorn", "starlette", "httptools", "uvloop")
        info["packages"] = {name: version(name) for name in names}
    return info


def _latency_text(figures: dict[str, Any]) -> str:
    def one(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"

    return " / ".join(one(figures[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")) + " ms"


def _rows(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value}" + (f"   ({note})" if note else ""))


def _print_header(report: dict[str, Any]) -> None:
    m, cfg, g = report["machine"], report.get("config", {}), report.get("git", {})
    print()
    print(f"gitstafette server benchmark  {report['time']}")
    print(f"  machine  {m['nproc']} CPUs ({m.get('cpu', '?')}), Python {m['python']}")
    print(f"  server   {cfg.get('server', '?')}")
    print(f"  store    {cfg.get('store', '?')}")
    if g.get("head"):
        changed = f" + uncommitted changes in {', '.join(g['src_changed'])}" if g["src_changed"] else ""
        print(f"  commit   {g['head']}{changed}")
    for key in ("quiet_before_ingest", "quiet_before_stream"):
        if q := report.get(key):
            state = "" if q["quiet"] else " (NOT quiet: figures are low)"
            print(
                f"  {key.replace('_', ' ')}: {q['busy_pct_of_all_cores']:.0f} % busy after {q['waited_s']:.0f} s{state}"
            )


def _print_ingest(report: dict[str, Any], ingest: dict[str, Any]) -> None:
    sqlite = report.get("config", {}).get("store", "").startswith("sqlite")
    print()
    print(
        f"Measure 1 - ingest: {ingest['requests']} webhooks of {ingest['body_bytes']} B, {ingest['concurrency']} "
        f"keep-alive connections, {ingest['sender_processes']} sender process(es) ({ingest['sender_loop']}), "
        f"{ingest['warmup_requests']} warm-up requests first"
    )
    rate = ingest["accepted_per_s"]
    rows = [
        ("accepted (201) per second", f"{rate:,.0f}" if rate else "-",
         f"goal >= {GOAL_ACCEPTED_PER_S:,.0f}" + (" with SQLite" if sqlite else "")),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in ingest["statuses"].items()), ""),
        ("wall time", f"{ingest['wall_s']:.3f} s", ""),
        ("POST latency p50 / p90 / p99 / max", _latency_text(ingest["latency"]), ""),
        ("sender CPU", f"{ingest['sender_cpu_s']:.2f} s = {ingest['sender_cpu_pct_of_one_core']:.0f} % of one core",
         f"{ingest['sender_cpu_us_per_request']:.0f} us/request"),
    ]  # fmt: skip
    if ingest.get("transport_errors"):
        rows.append(("transport errors", json.dumps(ingest["transport_errors"]), f"reconnects {ingest['reconnects']}"))
    if cpu := ingest.get("server_cpu"):
        rows.append(
            ("server CPU", f"{cpu['cpu_s']:.2f} s = {cpu['cpu_pct']:.0f} % of one core",
             f"{cpu['us_per_request']:.0f} us/request; event-loop thread {cpu['main_thread_pct']:.0f} %, "
             f"other threads {cpu['other_threads_pct']:.0f} %")
        )  # fmt: skip
    if (mc := ingest.get("machine_cpu")) and mc.get("others_pct_of_one_core") is not None:
        busy = mc["others_pct_of_one_core"] > 25
        rows.append(
            ("CPU of other processes", f"{mc['others_pct_of_one_core']:.0f} % of one core",
             "the machine was busy with other work: figures are low" if busy else "the machine was quiet")
        )  # fmt: skip
        rows.append(("kernel interrupt time (irq+softirq)", f"{mc['interrupts_pct_of_one_core']:.0f} % of one core",
                     "loopback TCP work, charged to no process"))  # fmt: skip
    dur = report.get("durability", {})
    if dur.get("checked"):
        rows.append(("201s found in the SQLite file", f"{dur['found_in_db']} / {dur['accepted_201']}",
                     "all durable" if not dur["missing"] else f"{dur['missing']} MISSING"))  # fmt: skip
    if report.get("server_counters"):
        rows.append(("server's own counters", json.dumps(report["server_counters"]), "warm-up included"))
    _rows(rows)


def _print_stream(stream: dict[str, Any]) -> None:
    print()
    gap = f", {stream['gap_ms']:g} ms apart" if stream.get("gap_ms") else ""
    print(f"Measure 2 - POST -> stream: {stream['messages']} webhooks one at a time{gap}, {stream['rpc']}")
    rows = [
        ("POST -> event on stream p50 / p90 / p99 / max", _latency_text(stream["post_to_stream"]),
         f"goal p50 < {GOAL_STREAM_P50_MS:g} ms"),
        ("POST -> 201 answer p50 / p90 / p99 / max", _latency_text(stream["post_to_201"]), "same requests"),
    ]  # fmt: skip
    if (baseline := stream["baseline_post_to_201_no_stream"])["n"]:
        rows.append(("POST -> 201 with no stream open", _latency_text(baseline),
                     f"baseline: {baseline['n']} requests before the stream was opened"))  # fmt: skip
    rows.append(("statuses", ", ".join(f"{k}: {v}" for k, v in stream["statuses"].items()), ""))
    rows.append(("events / acks / redeliveries seen",
                 f"{stream['events_seen']} / {stream['acks_sent']} / {stream['redeliveries_seen']}", ""))  # fmt: skip
    backlog = stream["backlog_replayed_before_measuring"]
    if backlog["events"]:
        rows.append(("backlog replayed before measuring", f"{backlog['events']} events in {backlog['seconds']:.2f} s",
                     f"{backlog['events_per_s']:,.0f} events/s, acknowledged one by one"))  # fmt: skip
    _rows(rows)


def _print_profile(
    process: str, during: str, spy: dict[str, Any], threads: int = 6, own: int = 12, inclusive: int = 15
) -> None:
    """A py-spy profile as PySpy.summary() made it: the busiest threads, then the top frames."""
    print()
    print(
        f"py-spy of the {process} during {during}: {spy['samples']} busy samples at {spy['rate_hz']} Hz "
        f"(% of the busy samples of all threads; py-spy slows the {process} down)"
    )
    for t in spy["threads"][:threads]:
        print(f"  {t['pct']:5.1f} %  {t['thread']}  (~{t['est_busy_s']:.1f} s busy)")
    print("  top by own time:")
    for f in spy["top_self"][:own]:
        print(f"  {f['pct']:5.1f} %  {f['frame']}")
    print("  top by inclusive time (entry path left out):")
    for f in spy["top_inclusive"][:inclusive]:
        print(f"  {f['pct']:5.1f} %  {f['frame']}")


def print_table(report: dict[str, Any]) -> None:
    _print_header(report)
    if ingest := report.get("ingest"):
        _print_ingest(report, ingest)
    if stream := report.get("stream"):
        _print_stream(stream)
    if goals := report.get("goals"):
        print()
        print("Goals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()))
    for name, spy in (("measure 1", report.get("py_spy")), ("measure 2", (stream or {}).get("py_spy"))):
        if spy and spy.get("top_self"):
            _print_profile("server", name, spy)
    print()


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    target = parser.add_argument_group("server under test")
    target.add_argument("--store", default="sqlite", help="store of the server started here: sqlite (a file in a "
                        "temporary folder), memory://, a full sqlite:///PATH URL, or redis://HOST:PORT/DB?prefix=NAME "
                        "(the bench's keys stay there: use a database or prefix of your own)")  # fmt: skip
    target.add_argument("--url", help="measure a running server at this HTTP base URL instead of starting one")
    target.add_argument("--grpc", help="with --url: its gRPC address host:port (default: the --url host, port 50051)")
    target.add_argument("--db", help="with --url: its SQLite file, to check that every 201 is in it")
    target.add_argument("--server-pid", type=int, help="with --url: its process id, for its CPU time and --py-spy")
    target.add_argument("--server-log-level", default="warning", help="--log-level of the server started here "
                        "(info logs a line per webhook, which costs server CPU)")  # fmt: skip
    target.add_argument("--server-arg", action="append", default=[], help="extra argument for the server (repeat it)")
    target.add_argument("--path", default="/v1/github/", help="webhook path")
    target.add_argument("--secret", default="", help="sign each webhook with this secret (X-Hub-Signature-256)")
    target.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="webhook payload (a repository event)")
    m1 = parser.add_argument_group("measure 1: ingest throughput")
    m1.add_argument("-n", "--requests", type=int, default=5000, help="webhooks to send")
    m1.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent senders (one connection each)")
    m1.add_argument("--warmup", type=int, default=200, help="webhooks sent first, not measured")
    m1.add_argument("--procs", type=int, default=1, help="sender processes sharing the connections")
    m1.add_argument("--no-uvloop", action="store_true", help="sender on the standard asyncio loop")
    m2 = parser.add_argument_group("measure 2: POST -> stream latency")
    m2.add_argument("-m", "--messages", type=int, default=1000, help="webhooks sent one at a time")
    m2.add_argument("--warmup-stream", type=int, default=20, help="webhooks sent first, not measured")
    m2.add_argument("--baseline", type=int, default=200, help="webhooks sent one at a time before the stream is "
                    "opened: POST -> 201 with no stream, to compare")  # fmt: skip
    m2.add_argument("--gap-ms", type=float, default=0, help="pause between two webhooks (sparse traffic: the "
                    "machine idles between them, as with real webhooks; 0 sends the next at once)")  # fmt: skip
    m2.add_argument("--stream", choices=("acked", "legacy"), default="acked",
                    help="acked: StreamWebhookEvents with an Ack per event; legacy: FetchWebhookEvents")  # fmt: skip
    other = parser.add_argument_group("other")
    other.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                       help="before each measure, wait up to this long for the machine to be nearly idle "
                       "(a shared machine running other work gives low figures)")  # fmt: skip
    other.add_argument("--skip-ingest", action="store_true", help="only measure 2")
    other.add_argument("--skip-stream", action="store_true", help="only measure 1")
    other.add_argument("--phase-timeout", type=float, default=300, help="seconds each measure may take at most")
    other.add_argument("--py-spy", action="store_true", help="profile the server with py-spy (pip install py-spy) "
                       "during measure 1 and the measured part of measure 2; needs ptrace rights")  # fmt: skip
    other.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    other.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    other.add_argument("--no-save", action="store_true", help="print only, write no file")
    other.add_argument("--label", default="", help="free text stored with the results")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "messages", "procs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.warmup, args.warmup_stream, args.baseline) < 0:
        parser.error("warm-up and baseline counts must be >= 0")
    return args


def _store_url(store: str, tmpdir: str) -> tuple[str, str | None]:
    """(store URL for the server, SQLite file path or None)."""
    if store in ("sqlite", "sqlite://"):
        path = os.path.join(tmpdir, "bench.db")
        return f"sqlite:///{path}", path
    if store.startswith("sqlite:///"):
        path = store[len("sqlite:///") :]
        return store, path if path.startswith("/") else str(ROOT / path)
    if store in ("memory", "memory://"):
        return "memory://", None
    if store.startswith(("redis://", "rediss://")):
        return store, None
    raise SystemExit(f"--store: {store!r}: use sqlite, memory://, sqlite:///PATH or redis://HOST:PORT/DB?prefix=NAME")


@dataclass
class Target:
    """Where the measured server listens, and what the bench knows about it."""

    host: str
    port: int
    grpc: str
    pid: int | None
    db_path: str | None
    config: dict[str, Any]
    server: ServerUnderTest | None = None


def start_target(args: argparse.Namespace, tmpdir: str, started: list[ServerUnderTest]) -> Target:
    """The server to measure: the one at ``--url``, or one started here (appended to ``started``)."""
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        grpc_target = args.grpc or f"{host}:50051"
        config = {
            "server": f"external: {args.url}, gRPC {grpc_target}",
            "store": f"sqlite:///{args.db}" if args.db else "(unknown)",
        }
        return Target(host, port, grpc_target, args.server_pid, args.db, config)
    store_url, db_path = _store_url(args.store, tmpdir)
    server = ServerUnderTest(store_url, args.server_log_level, args.server_arg)
    started.append(server)  # before start(): the caller stops it even if start() fails half-way
    server.start()
    config = {
        "server": f"started here (pid {server.pid}): HTTP {server.host}:{server.http_port}, "
        f"gRPC {server.host}:{server.grpc_port}, --log-level {args.server_log_level}",
        "store": store_url,
    }
    grpc_target = f"{server.host}:{server.grpc_port}"
    return Target(server.host, server.http_port, grpc_target, server.pid, db_path, config, server)


def run_measures(
    args: argparse.Namespace, target: Target, report: dict[str, Any], spy_name: Callable[[str], Path]
) -> None:
    goals: dict[str, bool] = {}
    report["goals"] = goals
    pid = target.pid
    if not args.skip_ingest:
        if args.wait_quiet:
            report["quiet_before_ingest"] = wait_quiet(args.wait_quiet)
        spy = PySpy(pid, spy_name("ingest"), args.py_spy_rate) if args.py_spy and pid else None
        try:
            ingest = measure_ingest(args, target.host, target.port, pid)
        finally:
            if spy is not None:
                report["py_spy"] = spy.stop()
        accepted = ingest.pop("_accepted_ids")
        report["ingest"] = ingest
        repository_id = Webhook.build(Path(args.fixture), target.host, target.port, args.path).repository_id
        report["durability"] = durability(target.db_path, repository_id, accepted)
        report["server_counters"] = server_counters(f"http://{target.host}:{target.port}")
        ok = (ingest["accepted_per_s"] or 0) >= GOAL_ACCEPTED_PER_S and ingest["accepted"] == args.requests
        goals[f"ingest >= {GOAL_ACCEPTED_PER_S:,.0f}/s, every webhook 201"] = ok
        if report["durability"].get("checked"):
            goals["every 201 in the SQLite file"] = report["durability"]["missing"] == 0
    if not args.skip_stream:
        if args.wait_quiet:
            report["quiet_before_stream"] = wait_quiet(args.wait_quiet)

        def profiler() -> PySpy | None:
            return PySpy(pid, spy_name("stream"), args.py_spy_rate) if args.py_spy and pid else None

        stream = measure_stream(args, target.host, target.port, target.grpc, pid, profiler)
        report["stream"] = stream
        p50 = stream["post_to_stream"]["p50_ms"]
        goals[f"POST -> stream p50 < {GOAL_STREAM_P50_MS:g} ms"] = p50 is not None and p50 < GOAL_STREAM_P50_MS


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_report(report: dict[str, Any], results: Path, name: str, save: bool = True) -> None:
    """Print the report as one JSON line; with ``save``, also write it (indented) to ``results/name``."""
    print(json.dumps(report, separators=(",", ":")))
    if not save:
        return
    results.mkdir(parents=True, exist_ok=True)
    out = results / name
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", file=sys.stderr)


def _save(args: argparse.Namespace, report: dict[str, Any], stamp: str) -> None:
    store = report.get("config", {}).get("store", "x").split(":")[0].strip("(") or "x"
    write_report(report, args.results, f"ingest-{store}-{stamp}.json", not args.no_save)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started: list[ServerUnderTest] = []
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # so that `finally` stops the server
    sys.path.insert(0, str(ROOT / "src"))  # gitstafette._proto, when the package is not installed
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "bench": "ingest", "time": stamp, "label": args.label, "machine": machine(), "git": git_state(),
    }  # fmt: skip
    tmpdir = tempfile.mkdtemp(prefix="gitstafette-bench-")
    spy_folder = Path(tmpdir) if args.no_save else args.results
    exit_code = 0
    try:
        target = start_target(args, tmpdir, started)
        report["config"] = {
            **target.config,
            **{k: getattr(args, k) for k in ("requests", "concurrency", "procs", "warmup", "messages", "stream")},
            "fixture": str(args.fixture),
        }
        spy_folder.mkdir(parents=True, exist_ok=True)
        run_measures(args, target, report, lambda name: spy_folder / f"ingest-{stamp}-{name}-pyspy.txt")
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        exit_code = 130
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        exit_code = 1
    finally:
        for server in started:
            server.stop()
            report["server_exit"] = {"code": server.exit_code, "stop_s": server.stop_s, "log_lines": server.log_lines}
            if exit_code or server.exit_code not in (0, None):
                report["server_log_tail"] = "".join(list(server.log)[-20:])
        shutil.rmtree(tmpdir, ignore_errors=True)  # the SQLite file (py-spy files are in --results when saved)
    print_table(report)
    if report.get("error"):
        print(f"ERROR: {report['error']}", file=sys.stderr)
        if report.get("server_log_tail") and report["server_log_tail"].strip() not in report["error"]:
            print("server log (last lines):\n" + report["server_log_tail"], file=sys.stderr)
    _save(args, report, stamp)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
