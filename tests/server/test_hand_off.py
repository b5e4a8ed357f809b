"""The dispatcher moves a repository between the connections of a client id only once everything sent on it
is settled: the lane it leaves stops sending at once, reports when its last event is acknowledged, and the
connection that takes it over goes on after that event, in order."""

from __future__ import annotations

import asyncio

from gitstafette.server.dispatch import Connection, Dispatcher, Outgoing
from gitstafette.store.memory import MemoryStore
from tests.store.test_store_suite import REPO_A, REPO_B, event


async def _next_event(connection: Connection, timeout: float = 5) -> Outgoing:
    while not isinstance(item := await asyncio.wait_for(connection.outbox.get(), timeout), Outgoing):
        pass  # assignment announcements
    return item


async def _no_event(connection: Connection) -> bool:
    try:
        await _next_event(connection, timeout=0.2)
    except TimeoutError:
        return True
    return False


async def test_a_busy_lane_moves_once_its_events_are_acknowledged() -> None:
    store = MemoryStore()
    await store.open()
    dispatcher = Dispatcher(store)
    await store.append(event("a-1", REPO_A))
    first = dispatcher.connect("ci", [REPO_A, REPO_B])
    assert first.serving() == [REPO_A, REPO_B]
    sent = await _next_event(first)
    assert (sent.event.repository_id, sent.event.sequence) == (REPO_A, 1)

    # Two lanes against none: REPO_A (the one the newcomer wants too) is to move, but #1 waits for its answer.
    second = dispatcher.connect("ci", [REPO_A])
    assert second.serving() == []
    await store.append(event("a-2", REPO_A))
    assert await _no_event(first), "a lane handing off sent another event"
    assert await _no_event(second), "the repository moved before its events were acknowledged"

    assert await dispatcher.settle(first, REPO_A, 1)
    assert first.serving() == [REPO_B] and second.serving() == [REPO_A]
    taken = await _next_event(second)
    assert (taken.event.delivery_id, taken.redelivery) == ("a-2", 0)
    assert dispatcher.cursors() == {("ci", REPO_A): 1, ("ci", REPO_B): 0}

    await dispatcher.disconnect(first)
    await dispatcher.disconnect(second)
    assert dispatcher.connection_count() == 0
    await store.aclose()


async def test_an_idle_lane_moves_at_once_and_a_settlement_after_it_moved_is_refused() -> None:
    store = MemoryStore()
    await store.open()
    dispatcher = Dispatcher(store)
    first = dispatcher.connect("ci", [REPO_A, REPO_B])
    second = dispatcher.connect("ci", [REPO_A, REPO_B])
    assert first.serving() == [REPO_B] and second.serving() == [REPO_A]
    await store.append(event("a-1", REPO_A))
    sent = await _next_event(second)
    assert sent.event.delivery_id == "a-1"
    assert not await dispatcher.settle(first, REPO_A, 1), "settled on a connection that no longer holds it"
    assert await dispatcher.settle(second, REPO_A, 1)

    await dispatcher.disconnect(first)
    await dispatcher.disconnect(second)
    await store.aclose()
