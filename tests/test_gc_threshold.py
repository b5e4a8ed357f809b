"""The garbage collector's threshold is the process's: raised while anything holds it, put back when the last
holder lets go, whatever the order (a server and a client in one process, as the demo runs them)."""

from __future__ import annotations

import gc

from gitstafette._runtime import GC_THRESHOLD, hold_gc_threshold
from gitstafette.client.app import Client
from gitstafette.config import ServerConfig, StoreConfig
from gitstafette.server.server import Server
from tests.client.test_client_gc import NO_SERVER


def test_holders_nest_and_the_last_to_let_go_puts_the_threshold_back(
    default_gc_thresholds: tuple[int, int, int],
) -> None:
    first = hold_gc_threshold()
    second = hold_gc_threshold()
    assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
    first()
    first()  # once more: it let go already, the second still holds
    assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
    second()
    assert gc.get_threshold() == default_gc_thresholds


async def test_a_server_that_stops_first_leaves_the_threshold_raised_for_the_client(
    default_gc_thresholds: tuple[int, int, int],
) -> None:
    server = Server(ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0, store=StoreConfig("memory")))
    client = Client(NO_SERVER)
    try:
        try:
            await server.startup()
            await client.startup()
        finally:
            await server.shutdown()
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10), "the client still runs"
    finally:
        await client.shutdown()
    assert gc.get_threshold() == default_gc_thresholds
