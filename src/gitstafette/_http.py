"""An HTTP listener for a starlette app inside our own event loop (the server's, the client's health port),
with the limits uvicorn's httptools protocol lacks: how large a request's headers may be, and how long
they may take to arrive; so that a slow or idle client cannot hold a connection (and its memory) for ever.

uvicorn has a keep-alive timeout (between requests) but, with httptools, no limit on the size of the
request line and headers, and no deadline for them: a client trickling one header byte a second would
hold its connection indefinitely. :func:`limited_http_protocol` adds both:

- the request line and headers must arrive within ``header_timeout_s`` from the first byte of a request
  (or from the connection, for a client that sends nothing at all): else 408 and the connection closes;
- they may be ``max_header_bytes`` at most: else 431 and the connection closes.

The body's own deadline is the application's (``http_app._read_body``): it knows when it starts reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["EmbeddedHttpServer", "HttpLimits", "LimitedHttpToolsProtocol", "bind_tcp", "limited_http_protocol"]

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    """:param keep_alive_timeout_s: an idle keep-alive connection is closed after this long (uvicorn's)."""

    header_timeout_s: float
    max_header_bytes: int
    keep_alive_timeout_s: float


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on request lines and headers.

    Cheap on purpose, it runs for every request: bytes are counted per read while a request's headers are
    arriving (so that headers never completed cannot grow without end), and the headers of a request are
    measured exactly once, when they are complete.
    """

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: True while what arrives is a request line and headers, not a body
        self._in_headers = True
        #: bytes read since the current request's headers began
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        #: set once the connection is refused: nothing more it sends reaches the application
        self._refused = False

    # -- the deadline ----------------------------------------------------------------------
    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._header_bytes:
            self._refuse(408, "the request headers did not arrive in time")
        elif not self.transport.is_closing():
            self.transport.close()  # a connection that never sent a byte: nothing to answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` and close; later parser callbacks of this connection are ignored."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        body = detail.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()

    def _too_large(self) -> None:
        self._refuse(431, f"request line and headers over {self.limits.max_header_bytes} bytes")

    # -- reads and parser callbacks --------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_headers:
            if not self._header_bytes and self._header_timer is None:
                self._arm()  # the first bytes of a request on a kept-alive connection
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.limits.max_header_bytes and not self._refused:
            self._too_large()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._too_large()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        if not self._refused:
            super().on_message_complete()


def limited_http_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn's ``http`` setting, enforcing ``limits``."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def bind_tcp(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it from ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
    # keep-alive answer waits for the peer's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process that embeds it owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedHttpServer:
    """uvicorn serving ``app`` on ``host:port`` as a task of the running loop.

    :param grace_s: on ``stop``, how long requests in flight may take before connections are cut.
    :param ssl_context: serve HTTPS with this context (kept, not copied: what changes in it, or what its
        SNI callback switches to, applies to the next handshake).
    :param limits: header size and deadlines for requests (uvicorn's defaults without).
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        grace_s: float,
        name: str = "http",
        ssl_context: ssl.SSLContext | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self._server = _Uvicorn(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                timeout_graceful_shutdown=max(1, int(grace_s)),
                ssl_context_factory=None if ssl_context is None else (lambda config, default: ssl_context),
                http="auto" if limits is None else limited_http_protocol(limits),
                timeout_keep_alive=5 if limits is None else max(1, round(limits.keep_alive_timeout_s)),
            )
        )
        self._grace_s = grace_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind (the chosen port is then in ``self.port``) and serve; returns once requests are taken."""
        sock = bind_tcp(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                sock.close()
                await self._task
                raise OSError(f"the {self.name} listener on {self.host}:{self.port} stopped during startup")
            await asyncio.sleep(0.01)

    async def stop(self, timeout_s: float | None = None) -> bool:
        """Take no new connections, let requests in flight finish within the grace (or ``timeout_s``, the
        time a shutdown has left), then cut the rest. False when some were cut."""
        if self._task is None:
            return True
        self._server.should_exit = True
        graceful = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._grace_s + 1 if timeout_s is None else timeout_s)
        except TimeoutError:
            graceful = False
            self._server.force_exit = True
            await self._task
        self._task = None
        return graceful
