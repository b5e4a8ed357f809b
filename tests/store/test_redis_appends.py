"""Appends of the Redis store that arrive together go to Redis as one pipeline: each caller still gets its own
answer (a sequence, or "already stored"), in the order the appends were made, and a Redis that lost its
scripts (restarted, SCRIPT FLUSH) is given the script again without storing anything twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_utils import REPLICAS_TESTS_DB, RedisServer, redis_store_url, unique_prefix
from tests.store.test_redis_store import new_store
from tests.store.test_store_suite import REPO_A, event


@pytest.fixture
def url() -> Iterator[str]:
    with redis_store_url(REPLICAS_TESTS_DB) as url:
        yield url


async def test_appends_made_together_each_get_their_answer_in_order(url: str) -> None:
    async with new_store(url) as store:
        deliveries = [f"d{i}" for i in range(300)]
        # Every delivery twice in one burst: the second of each is the duplicate, whichever batch it is in.
        results = await asyncio.gather(*(store.append(event(d)) for d in deliveries + deliveries))
        first, again = results[: len(deliveries)], results[len(deliveries) :]
        assert [r.event.sequence for r in first] == list(range(1, len(deliveries) + 1))
        assert all(r.created for r in first)
        assert [(r.created, r.event.sequence) for r in again] == [(False, r.event.sequence) for r in first]
        stored = await store.read_after(REPO_A, 0, limit=1000)
        assert [e.delivery_id for e in stored] == deliveries


async def test_a_redis_that_lost_its_scripts_gets_them_again(tmp_path: Path) -> None:
    own = RedisServer(tmp_path).start()
    try:
        async with new_store(f"{own.url}/0?prefix={unique_prefix()}") as store:
            assert (await store.append(event("before"))).event.sequence == 1
            with redis.Redis(port=own.port, socket_timeout=5) as client:
                client.script_flush()
            results = await asyncio.gather(*(store.append(event(f"after{i}")) for i in range(20)))
            assert [(r.created, r.event.sequence) for r in results] == [(True, s) for s in range(2, 22)]
            assert len(await store.read_after(REPO_A, 0, limit=100)) == 21
    finally:
        own.stop()
