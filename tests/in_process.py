"""The real server in the test's own process and event loop: for tests that reach into it (its store, its
timing) while real gRPC and HTTP clients talk to it on free loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gitstafette.config import ServerConfig, StoreConfig
from gitstafette.server.server import Server
from gitstafette.store import EventStore


@contextlib.asynccontextmanager
async def in_process_server(url: str, store: EventStore | None = None, **config: Any) -> AsyncIterator[Server]:
    """A started :class:`Server` on 127.0.0.1 (both ports free ones) with the store ``url`` names, or ``store``
    itself; ``config`` sets other :class:`ServerConfig` fields. Shut down on the way out."""
    server = Server(
        ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0, store=StoreConfig.from_url(url), **config),
        store=store,
    )
    await server.startup()
    try:
        yield server
    finally:
        await server.shutdown()
