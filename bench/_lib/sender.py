"""What the benches post, and how: the webhook as GitHub sends it (pre-built bytes with a hole for the delivery
id), a raw keep-alive HTTP/1.1 client, and closed-loop concurrent senders, in this process or in several.

The sender is deliberately raw (only the status line and Content-Length of each answer are parsed) so that,
on a 2-core machine shared with the server, it costs as little CPU as possible.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ROOT
from .cpu import self_cpu

__all__ = [
    "DEFAULT_FIXTURE",
    "IDLE_RECONNECT_S",
    "MAX_RECONNECTS",
    "REQUEST_TIMEOUT_S",
    "TRANSPORT_ERRORS",
    "HttpConnection",
    "SenderResult",
    "SenderSpec",
    "Webhook",
    "delivery_id",
    "has_uvloop",
    "run_loop",
    "run_senders",
    "send_all",
]

#: GitHub's push webhook (6,923 bytes)
DEFAULT_FIXTURE = ROOT / "tests" / "fixtures" / "github" / "push.0.json"

#: A request whose answer takes longer than this counts as an error ("timeout").
REQUEST_TIMEOUT_S = 30.0
#: Reconnects one sender connection may make before it gives up.
MAX_RECONNECTS = 20
#: A keep-alive connection idle this long is replaced before the next request (uvicorn closes at 5 s).
IDLE_RECONNECT_S = 2.0
#: What a failed exchange raises: a refused, reset or closed connection, an answer that does not parse, a timeout.
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError)


def delivery_id(base: int, index: int) -> str:
    """A GUID-shaped delivery id, unique per run and index (so it can be recomputed from the index)."""
    return str(uuid.UUID(int=(base + index) % (1 << 128)))


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

    async def exchange_within(self, request: bytes, timeout_s: float) -> tuple[int, bytes]:
        """``exchange`` with a deadline. On a failure (one of ``TRANSPORT_ERRORS``) the connection is closed, so
        that the next request opens a new one, and the error raised."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.exchange(request)
        except TRANSPORT_ERRORS:
            self.close()
            raise


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
            status, _ = await connection.exchange_within(request, spec.timeout_s)
        except TRANSPORT_ERRORS as exc:
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
