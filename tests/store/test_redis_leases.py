"""Leases of the Redis store: one holder of (client id, repository) across the replicas sharing a Redis, a
release that wakes the one standing by, a lease lost when another holder has it, fencing tokens that tell a
holder whether anyone else served meanwhile. The in-process stores grant at once (their dispatcher keeps one
lane per repository itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs

import pytest
import redis

from gitstafette import constants
from gitstafette.store import EventStore, Lease, MemoryStore
from tests.redis_utils import REPLICAS_TESTS_DB, redis_store_url
from tests.store.test_redis_store import new_store

CLIENT = "jenkins"
REPO = "186853002"


@pytest.fixture
def url() -> Iterator[str]:
    """A lease that would outlive any test: only a release ends it."""
    with redis_store_url(REPLICAS_TESTS_DB, "&lease_ttl=10m") as url:
        yield url


@pytest.fixture
def short_url() -> Iterator[str]:
    with redis_store_url(REPLICAS_TESTS_DB, "&lease_ttl=1s") as url:
        yield url


@pytest.fixture
async def replicas(url: str) -> AsyncIterator[tuple[EventStore, EventStore]]:
    async with new_store(url) as a, new_store(url) as b:
        yield a, b


def lease_key(url: str) -> str:
    prefix = parse_qs(url.partition("?")[2])["prefix"][-1]
    return f"{prefix}:" + constants.REDIS_LEASE_KEY.format(repository_id=REPO, client_id=CLIENT)


def lease_value(url: str) -> str | None:
    with redis.Redis.from_url(url.partition("?")[0], socket_timeout=5) as client:
        value = client.get(lease_key(url))
    return None if value is None else value.decode()


async def test_one_holder_across_replicas_and_a_release_wakes_the_one_standing_by(
    url: str, replicas: tuple[EventStore, EventStore]
) -> None:
    a, b = replicas
    first, second = a.lease(CLIENT, REPO, "connection 1"), b.lease(CLIENT, REPO, "connection 7")
    assert await first.acquire() is True
    assert await first.acquire() is True  # asking again keeps it
    assert await second.acquire() is False
    value = lease_value(url)
    assert value is not None and value.startswith("1 ") and value.endswith(" connection 1"), value
    # Another client id, or another repository, is another lease.
    assert await b.lease("ops", REPO, "connection 7").acquire() is True
    assert await b.lease(CLIENT, "537845873", "connection 7").acquire() is True

    standing_by = asyncio.create_task(second.wait())
    await asyncio.sleep(0.2)
    assert not standing_by.done()  # the lease lives 10 minutes: only the release can end this wait
    await first.release()
    await asyncio.wait_for(standing_by, 30)
    assert await second.acquire() is True
    assert second.held_elsewhere is False  # its first lease: nothing of its own to forget
    value = lease_value(url)
    assert value is not None and value.startswith("2 ") and value.endswith(" connection 7"), value

    # The first comes back: it stands by now, and learns that another holder served meanwhile.
    assert await first.acquire() is False
    await second.release()
    assert await first.acquire() is True
    assert first.held_elsewhere is True
    await first.release()
    assert lease_value(url) is None


async def test_a_lease_expires_when_its_holder_stalls_and_a_holder_that_lost_it_learns_so(short_url: str) -> None:
    async with new_store(short_url) as b:
        a = new_store(short_url)
        await a.open()
        first = a.lease(CLIENT, REPO, "connection 1")
        assert await first.acquire() is True
        # Renewed while held (every third of its second): it outlives its time to live.
        await asyncio.sleep(2.5)
        assert not first.lost.is_set()
        second = b.lease(CLIENT, REPO, "connection 2")
        assert await second.acquire() is False

        # The holder stalls without giving its lease up (as a replica frozen, or killed: see the drills with
        # real processes): not renewed, the lease expires, and the other takes it.
        renewing = first._renewing  # type: ignore[attr-defined]
        assert renewing is not None
        renewing.cancel()
        while not await second.acquire():
            await second.wait()
        assert second.held_elsewhere is False
        await a.aclose()  # gives up what it holds: nothing, now; the other's lease stays
        value = lease_value(short_url)
        assert value is not None and value.startswith("2 ") and value.endswith(" connection 2"), value

        # A holder whose lease went to another (it expired while this one could not reach Redis) stops too.
        key = lease_key(short_url)
        with redis.Redis.from_url(short_url.partition("?")[0], socket_timeout=5) as client:
            client.delete(key)
        third = b.lease(CLIENT, REPO, "connection 3")
        assert await third.acquire() is True
        await asyncio.wait_for(second.lost.wait(), 30)
        await second.release()  # not its lease any more: left alone
        value = lease_value(short_url)
        assert value is not None and value.startswith("3 ") and value.endswith(" connection 3"), value
        await third.release()


async def test_a_lease_taken_again_without_another_holder_keeps_its_state(url: str) -> None:
    async with new_store(url) as a:
        lease = a.lease(CLIENT, REPO, "connection 1")
        assert await lease.acquire() is True
        await lease.release()
        assert await lease.acquire() is True
        assert lease.held_elsewhere is False  # token 2 after token 1: nobody in between
        await lease.release()


async def test_the_in_process_stores_grant_at_once() -> None:
    lease = MemoryStore().lease(CLIENT, REPO, "connection 1")
    assert type(lease) is Lease
    assert await lease.acquire() is True and await lease.acquire() is True
    assert not lease.lost.is_set() and lease.held_elsewhere is False


async def test_a_store_that_closes_gives_its_leases_up(url: str, replicas: tuple[EventStore, EventStore]) -> None:
    a, b = replicas
    closing = new_store(url)
    await closing.open()
    assert await closing.lease(CLIENT, REPO, "connection 1").acquire() is True
    standing_by = b.lease(CLIENT, REPO, "connection 2")
    assert await standing_by.acquire() is False
    waiting = asyncio.create_task(standing_by.wait())
    await closing.aclose()  # the lease lives 10 minutes: only giving it up ends the wait
    await asyncio.wait_for(waiting, 30)
    assert await standing_by.acquire() is True
    await standing_by.release()
