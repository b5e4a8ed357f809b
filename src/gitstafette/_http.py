"""An HTTP listener for a starlette app inside our own event loop: the server's, the client's health port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from gitstafette._http_limits import HttpLimits, limited_http_protocol

__all__ = ["EmbeddedHttpServer", "bind_tcp"]


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
