"""What only the Redis store has to show, beyond the shared suite: several replicas on one Redis, key prefixes,
and a Redis that goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gitstafette.config import StoreConfig
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.store import EventStore, create_store
from gitstafette.store.redis import RedisStore
from tests.redis_utils import (
    REDIS_TESTS_DB,
    RedisServer,
    delete_prefix,
    free_port,
    redis_store_url,
    redis_url,
)
from tests.store.test_store_suite import NOW_NS, REPO_A, REPO_B, S_NS, event, sequences


def new_store(url: str) -> EventStore:
    return create_store(StoreConfig.from_url(url))


@pytest.fixture
def url() -> Iterator[str]:
    """A store URL on the machine's Redis with a key prefix of this test's own."""
    with redis_store_url(REDIS_TESTS_DB) as url:
        yield url


@pytest.fixture
async def replicas(url: str) -> AsyncIterator[tuple[EventStore, EventStore]]:
    """Two stores on the same Redis and prefix, as two server replicas have."""
    async with new_store(url) as a, new_store(url) as b:
        yield a, b


async def timed_wait(store: EventStore, repository_id: str, after: int) -> asyncio.Task[bool]:
    task = asyncio.create_task(store.wait_for_events(repository_id, after, timeout=5))
    await asyncio.sleep(0.05)  # the waiter is waiting
    assert not task.done()
    return task


async def test_a_replica_wakes_within_milliseconds_for_an_append_on_another(
    replicas: tuple[EventStore, EventStore],
) -> None:
    a, b = replicas
    await a.append(event("d1"))
    latencies = []
    for i in range(2, 12):
        waiter = await timed_wait(b, REPO_A, i - 1)
        started = time.perf_counter()
        result = await a.append(event(f"d{i}"))
        assert await waiter is True
        latencies.append(time.perf_counter() - started)
        assert result.event.sequence == i
        # What woke it can be read on the other replica at once.
        [read] = await b.read_after(REPO_A, i - 1)
        assert read.delivery_id == f"d{i}"
    latencies.sort()
    # The median, on a 2-core machine also busy with other tests: a polling timer would show here.
    assert latencies[len(latencies) // 2] < 0.05, latencies


async def test_a_new_repository_on_another_replica_wakes_wait_any(replicas: tuple[EventStore, EventStore]) -> None:
    a, b = replicas
    waiter = asyncio.create_task(b.wait_any(timeout=5))
    await asyncio.sleep(0.05)
    await a.append(event("b1", REPO_B))
    assert await waiter is True
    assert await b.resolve_repository("codertocat/hello-world") == REPO_B


async def test_replicas_share_numbering_deduplication_cursors_and_pruning(
    replicas: tuple[EventStore, EventStore],
) -> None:
    a, b = replicas
    # The same delivery posted to both replicas at once is stored once.
    results = await asyncio.gather(*(store.append(event("same")) for store in (a, b, a, b)))
    assert sorted(r.created for r in results) == [False, False, False, True]
    assert {r.event.sequence for r in results} == {1}
    for i in range(2, 5):
        await (a if i % 2 else b).append(event(f"d{i}", received_at_ns=NOW_NS - 100 * S_NS))
    assert await sequences(a, REPO_A) == await sequences(b, REPO_A) == [1, 2, 3, 4]

    await a.set_cursor("ci", REPO_A, 3)
    await b.set_cursor("ci", REPO_A, 2)  # an older acknowledgement arriving late at the other replica
    assert await b.get_cursor("ci", REPO_A) == 3
    # "same" is recent (received now), so pruning stops before it: nothing goes.
    assert await b.prune(NOW_NS, retention_s=10, max_age_s=1000) == 0
    assert await a.start_cursor("new", REPO_A) == 0
    assert await b.repositories() == await a.repositories()


async def test_a_key_prefix_keeps_two_installations_apart(url: str) -> None:
    other_url = redis_url(REDIS_TESTS_DB)  # the same Redis database, another prefix
    try:
        async with new_store(url) as mine, new_store(other_url) as theirs:
            await mine.append(event("d1"))
            await mine.set_cursor("ci", REPO_A, 1)
            waiter = asyncio.create_task(theirs.wait_for_events(REPO_A, 0, timeout=0.3))
            await asyncio.sleep(0.05)
            await mine.append(event("d2"))

            assert await waiter is False  # not woken by the other installation's events
            assert await theirs.repositories() == []
            assert await theirs.read_after(REPO_A, 0) == []
            assert await theirs.get_cursor("ci", REPO_A) is None
            # The same delivery is new to the other installation.
            result = await theirs.append(event("d1"))
            assert result.created and result.event.sequence == 1
            assert await sequences(mine, REPO_A) == [1, 2]
    finally:
        delete_prefix(other_url)


async def test_every_key_starts_with_the_prefix(url: str) -> None:
    async with new_store(url) as store:
        await store.append(event("d1"))
        await store.set_cursor("ci", REPO_A, 1)
    prefix = url.partition("?prefix=")[2]
    with redis.Redis.from_url(url.partition("?")[0]) as client:
        keys = sorted(key.decode() for key in client.scan_iter(match=f"{prefix}:*"))
    assert keys == sorted(
        f"{prefix}:{name}"
        for name in (
            "appended",
            "repositories",
            f"repo:{REPO_A}",
            f"repo:{REPO_A}:events",
            f"repo:{REPO_A}:deliveries",
            f"repo:{REPO_A}:received_at_ns",
            f"repo:{REPO_A}:cursors",
        )
    )


async def test_a_redis_error_that_is_not_about_reaching_it_is_a_store_error(url: str) -> None:
    async with new_store(url) as store:
        assert isinstance(store, RedisStore)
        with redis.Redis.from_url(url.partition("?")[0]) as client:
            client.set(store.keys.cursors(REPO_A), "not a hash")
        with pytest.raises(StoreError, match="WRONGTYPE") as caught:
            await store.get_cursor("ci", REPO_A)
        assert not isinstance(caught.value, StoreUnavailable)
        assert isinstance(caught.value.__cause__, redis.RedisError)


async def test_opening_an_unreachable_redis_says_so() -> None:
    port = free_port()  # nothing listens there
    store = new_store(f"redis://:hunter2@127.0.0.1:{port}/0?prefix=gst-test-nothing")
    with pytest.raises(StoreUnavailable, match=f"Redis redis://:\\*+@127.0.0.1:{port}/0.* is unreachable") as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_going_away_is_store_unavailable_and_everything_recovers(own_redis: RedisServer) -> None:
    url = f"{own_redis.url}/0?prefix=gst-test-restart"
    async with new_store(url) as a, new_store(url) as b:
        await a.append(event("d1"))

        own_redis.stop()
        with pytest.raises(StoreUnavailable, match="is unreachable \\(checking that it answers\\)"):
            await a.ping()
        with pytest.raises(StoreUnavailable, match="storing an event"):
            await a.append(event("d2"))
        with pytest.raises(StoreUnavailable):
            await b.read_after(REPO_A, 0)

        own_redis.start()  # empty: this one keeps nothing
        await a.ping()
        await b.ping()
        assert (await a.append(event("d3"))).event.sequence == 1
        # b's reader of the notices reconnected by itself: an append on a wakes b's waiters again.
        for _ in range(200):
            waiter = asyncio.create_task(b.wait_for_events(REPO_A, 1, timeout=0.05))
            if await waiter:
                break
            await a.append(event(f"again-{_}"))
        else:
            pytest.fail("the replica's wake-up never came back")
        later = await a.append(event("d4"))
        assert await b.wait_for_events(REPO_A, later.event.sequence - 1, timeout=2) is True


async def test_a_password_in_the_url_is_used_and_never_shown(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, extra_args=["--requirepass", "s3cret"]).start()
    try:
        async with new_store(f"{server.url.replace('://', '://:s3cret@')}/0?prefix=gst-test-auth") as store:
            assert "s3cret" not in repr(store) and "**********" in repr(store)
            assert (await store.append(event("d1"))).created
        with pytest.raises(StoreError, match="(?i)auth|password") as caught:
            await new_store(f"{server.url.replace('://', '://:wrong@')}/0?prefix=gst-test-auth").open()
        assert "wrong" not in str(caught.value)
    finally:
        server.stop()
