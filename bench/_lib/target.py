"""The target the client under test delivers to: a minimal HTTP/1.1 server on the bench's own event loop
(asyncio or uvloop) that answers 200 with an empty body and records every request, by delivery id, in
arrival order, with the ``time.perf_counter_ns()`` its last byte was handed over."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from dataclasses import dataclass

__all__ = ["CHECKED_HEADERS", "MAX_HEAD_BYTES", "Arrival", "Recorder", "TargetProtocol", "digest", "start_target"]

#: Headers the relay must pass on unchanged (DESIGN.md, client delivery), compared per arrival.
CHECKED_HEADERS = (
    b"x-github-event",
    b"x-github-delivery",
    b"x-github-hook-id",
    b"x-github-hook-installation-target-type",
    b"x-github-hook-installation-target-id",
    b"content-type",
    b"user-agent",
)
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#: Largest request head the target accepts (GitHub's headers are under 1 KB).
MAX_HEAD_BYTES = 64 * 1024


def digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


@dataclass
class Arrival:
    at_ns: int  # perf_counter_ns() when the last byte of the request was handed to the target
    body_digest: bytes
    headers: bytes  # the CHECKED_HEADERS values, newline-joined, to compare with what was sent


class Recorder:
    """Every request the target received, by delivery id, in arrival order."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[Arrival]] = {}
        self.order: list[str] = []  # delivery ids in arrival order, one entry per arrival
        self.waiting: dict[str, asyncio.Future[int]] = {}
        self.requests = 0
        self.bad_requests = 0
        self.connections = 0

    def record(self, delivery: str, arrival: Arrival) -> None:
        self.requests += 1
        self.order.append(delivery)
        known = self.arrivals.get(delivery)
        if known is None:
            self.arrivals[delivery] = [arrival]
            future = self.waiting.pop(delivery, None)
            if future is not None and not future.done():
                future.set_result(arrival.at_ns)
        else:
            known.append(arrival)

    def expect(self, delivery: str) -> asyncio.Future[int]:
        """A future resolved with the arrival time of ``delivery`` (at once if it arrived already)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if (known := self.arrivals.get(delivery)) is not None:
            future.set_result(known[0].at_ns)
        else:
            self.waiting[delivery] = future
        return future

    def forget(self, delivery: str) -> None:
        future = self.waiting.pop(delivery, None)
        if future is not None:
            future.cancel()


class TargetProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length or chunked bodies, answers ``200`` with an empty body."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self.recorder.connections += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buffer = self.buffer
        buffer += data
        while self.transport is not None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._fail()
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            start = end + 4
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                found = _dechunk(buffer, start)
                if found is None:
                    return
                body, consumed = found
            else:
                length_text = headers.get(b"content-length", b"0")
                if not length_text.isdigit():
                    self._fail()
                    return
                consumed = start + int(length_text)
                if len(buffer) < consumed:
                    return
                body = bytes(buffer[start:consumed])
            del buffer[:consumed]
            checked = b"\n".join(headers.get(name, b"") for name in CHECKED_HEADERS)
            delivery = headers.get(b"x-github-delivery", b"").decode("latin-1")
            self.recorder.record(delivery, Arrival(now, digest(body), checked))
            close = headers.get(b"connection", b"").lower() == b"close" or lines[0].endswith(b"HTTP/1.0")
            self.transport.write(_RESPONSE_CLOSE if close else _RESPONSE)
            if close:
                self.transport.close()
                self.transport = None

    def _fail(self) -> None:
        self.recorder.bad_requests += 1
        if self.transport is not None:
            self.transport.write(_BAD_REQUEST)
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """(body, bytes consumed up to the end of the request) of a complete chunked body, else None."""
    chunks: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0].strip() or b"0", 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", at - 2)
            return (b"".join(chunks), trailer_end + 4) if trailer_end >= 0 else None
        if len(buffer) < at + size + 2:
            return None
        chunks.append(bytes(buffer[at : at + size]))
        at += size + 2


async def start_target(recorder: Recorder, host: str, port: int) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: TargetProtocol(recorder), host, port, backlog=1024, reuse_address=True)
