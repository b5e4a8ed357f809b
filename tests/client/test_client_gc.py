"""The client raises the garbage collector's first threshold while it runs, and puts it back afterwards."""

from __future__ import annotations

import gc

from gitstafette._runtime import GC_THRESHOLD
from gitstafette.client.app import Client
from gitstafette.config import ClientConfig

#: a client that runs without a server: nothing listens where it connects, so it keeps trying, which is all
#: these tests need
NO_SERVER = ClientConfig(
    repositories=("537845873",),
    target="http://127.0.0.1:9/hook",
    servers=("127.0.0.1:9",),
    insecure=True,
    health_host="127.0.0.1",
    health_port=0,
)


async def test_the_threshold_is_raised_while_running_and_put_back(default_gc_thresholds: tuple[int, int, int]) -> None:
    client = Client(NO_SERVER)
    try:
        await client.startup()
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
    finally:
        await client.shutdown()
    assert gc.get_threshold() == default_gc_thresholds
