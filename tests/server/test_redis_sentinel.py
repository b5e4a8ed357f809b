"""A real server on a Redis that Sentinel watches (test-owned redis-server processes: a master, a replica and one
sentinel): webhooks are stored and streamed through the master Sentinel names, and after the master dies and
Sentinel promotes the replica, the server stores on the new master without a restart, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.grpc_clients import AckStream
from tests.redis_utils import RedisServer, SentinelServer, unique_prefix
from tests.server.test_redis_outage import DEADLINE_S, HELLO_WORLD_ID, post, until, webhook
from tests.utils import running_server


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, SentinelServer]]:
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = RedisServer(tmp_path / "master", appendonly=True).start()
    replica = RedisServer(
        tmp_path / "replica", appendonly=True, extra_args=["--replicaof", "127.0.0.1", str(master.port)]
    )
    sentinel = SentinelServer(tmp_path, master.port)
    try:
        replica.start()
        deadline = time.monotonic() + DEADLINE_S
        with redis.Redis(port=replica.port, socket_timeout=5) as client:
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
        sentinel.start()  # after the replica: its first look at the master finds the replica too
        with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
            while not client.execute_command("SENTINEL", "REPLICAS", sentinel.service):
                assert time.monotonic() < deadline, "the sentinel does not know the replica"
                time.sleep(0.05)
        yield master, replica, sentinel
    finally:
        for server in (sentinel, replica, master):
            server.stop()


async def test_a_server_on_sentinel_stores_through_a_failover(
    watched: tuple[RedisServer, RedisServer, SentinelServer],
) -> None:
    master, replica, sentinel = watched
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}/0?prefix={unique_prefix()}"
    before, after = webhook(0), webhook(1)
    with running_server("--store", url, "--repositories", HELLO_WORLD_ID) as server:
        async with httpx.AsyncClient() as http:
            assert await post(http, server, *before) == 201
            with redis.Redis(port=master.port, socket_timeout=5) as client:
                assert client.execute_command("WAIT", 1, 5000) == 1  # on the replica too

            master.stop()  # Sentinel calls it down after a second, and promotes the replica

            async def stored() -> bool:
                return await post(http, server, *after) in (201, 204)

            await until(stored, "a POST is stored on the new master", deadline_s=60)
            with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
                address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.service)
            assert int(address[1]) == replica.port

        async with AckStream(server.grpc_target, "after-failover", [HELLO_WORLD_ID]) as stream:
            for sequence, (headers, _body) in enumerate((before, after), start=1):
                relayed = await stream.next_event(timeout=DEADLINE_S)
                assert relayed is not None and relayed.sequence == sequence
                assert relayed.webhook_event.event_id == headers["X-GitHub-Delivery"]
    assert "redis+sentinel://127.0.0.1" in server.log()
