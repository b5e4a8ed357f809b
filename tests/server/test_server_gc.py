"""The server raises the garbage collector's first threshold while it runs, and puts it back afterwards."""

from __future__ import annotations

import gc

from gitstafette._runtime import GC_THRESHOLD
from gitstafette.config import ServerConfig, StoreConfig
from gitstafette.server.server import Server


async def test_the_threshold_is_raised_while_serving_and_put_back(default_gc_thresholds: tuple[int, int, int]) -> None:
    server = Server(ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0, store=StoreConfig("memory")))
    try:
        await server.startup()
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
    finally:
        await server.shutdown()
    assert gc.get_threshold() == default_gc_thresholds
