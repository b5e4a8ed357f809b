"""Limits uvicorn's httptools protocol lacks: how large a request's headers may be, and how long they may
take to arrive; so that a slow or idle client cannot hold a connection (and its memory) for ever.

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
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpLimits", "LimitedHttpToolsProtocol", "limited_http_protocol"]

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
