"""One suite for every ``EventStore`` backend: what the interface in ``store/base.py`` promises.

A backend joins the suite by adding one entry to ``BACKENDS`` (the store URL it is built from, given a
temporary folder); ``PERSISTENT`` lists those whose data outlives ``aclose()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gitstafette.config import StoreConfig
from gitstafette.model import AuditRecord, DeadLetter, WebhookEvent
from gitstafette.store import EventStore, create_store
from tests.redis_utils import SUITE_DB, delete_prefix, redis_url, require_redis

#: backend name → the store URL it is built from, in a per-test temporary folder
BACKENDS: dict[str, Callable[[Path], str]] = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'events.db'}",
    "sqlite-normal": lambda tmp: f"sqlite:///{tmp / 'events.db'}?synchronous=normal",
    # The machine's Redis, a database of the suite's own, and a key prefix of the test's own.
    "redis": lambda tmp: redis_url(SUITE_DB),
}
#: backends whose data survives closing and reopening the store
PERSISTENT = ["sqlite", "sqlite-normal", "redis"]

REPO_A = "186853002"
REPO_B = "537845873"
NOW_NS = 1_700_000_000 * 10**9
S_NS = 10**9


class Backend:
    """Builds stores of one kind on one location: a second ``new()`` sees the data of the first."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        self.url = BACKENDS[name](tmp_path)

    def new(self) -> EventStore:
        return create_store(StoreConfig.from_url(self.url))


def _backend(name: str, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(name, tmp_path)
    if not name.startswith("redis"):
        yield backend
        return
    # Unreachable: fails with GITSTAFETTE_REQUIRE_REDIS=1 (CI), else skips. Each test starts empty.
    require_redis(backend.url)
    delete_prefix(backend.url)
    yield backend
    delete_prefix(backend.url)


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture(params=PERSISTENT)
def persistent_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[EventStore]:
    async with backend.new() as opened:
        yield opened


def event(
    delivery_id: str,
    repository_id: str = REPO_A,
    *,
    body: bytes | None = None,
    received_at_ns: int = NOW_NS,
    name: str = "Codertocat/Hello-World",
) -> WebhookEvent:
    return WebhookEvent(
        repository_id=repository_id,
        delivery_id=delivery_id,
        event_type="push",
        body=body if body is not None else b'{"delivery": "' + delivery_id.encode() + b'"}',
        headers=(("X-GitHub-Event", "push"), ("X-GitHub-Delivery", delivery_id), ("Content-Type", "application/json")),
        received_at_ns=received_at_ns,
        repository_name=name,
    )


async def sequences(store: EventStore, repository_id: str, after: int = 0) -> list[int]:
    return [e.sequence for e in await store.read_after(repository_id, after, limit=1000)]


# ---- append and read ---------------------------------------------------------------------------


async def test_append_numbers_each_repository_from_one(store: EventStore) -> None:
    results = [
        await store.append(event("a1", REPO_A)),
        await store.append(event("b1", REPO_B)),
        await store.append(event("a2", REPO_A)),
        await store.append(event("a3", REPO_A)),
        await store.append(event("b2", REPO_B)),
    ]
    assert all(r.created for r in results)
    assert [(r.event.delivery_id, r.event.sequence) for r in results] == [
        ("a1", 1),
        ("b1", 1),
        ("a2", 2),
        ("a3", 3),
        ("b2", 2),
    ]
    assert await sequences(store, REPO_A) == [1, 2, 3]
    assert await sequences(store, REPO_B) == [1, 2]


async def test_same_delivery_id_is_stored_once(store: EventStore) -> None:
    await store.append(event("d1"))
    first = await store.append(event("d2", body=b'{"first": true}'))
    await store.append(event("d3"))

    again = await store.append(event("d2", body=b'{"second": true}'))

    assert again.created is False
    assert again.event.sequence == first.event.sequence == 2
    stored = await store.read_after(REPO_A, 0)
    assert [e.delivery_id for e in stored] == ["d1", "d2", "d3"]
    assert stored[1].body == b'{"first": true}'
    # The delivery id is unique per repository, not across repositories.
    other = await store.append(event("d2", REPO_B))
    assert other.created and other.event.sequence == 1


async def test_read_after_honours_cursor_limit_and_order(store: EventStore) -> None:
    sent = [
        event(f"d{i}", body=f'{{"i": {i}, "pad": "{"é" * i}"}}'.encode(), received_at_ns=NOW_NS + i)
        for i in range(1, 6)
    ]
    for e in sent:
        await store.append(e)

    assert await sequences(store, REPO_A) == [1, 2, 3, 4, 5]
    assert [e.sequence for e in await store.read_after(REPO_A, 0, limit=2)] == [1, 2]
    assert [e.sequence for e in await store.read_after(REPO_A, 2, limit=2)] == [3, 4]
    assert [e.sequence for e in await store.read_after(REPO_A, 4, limit=10)] == [5]
    assert await store.read_after(REPO_A, 5) == []
    assert await store.read_after("999", 0) == []

    read = await store.read_after(REPO_A, 0)
    assert [e.with_sequence(0) for e in read] == sent  # every field comes back as it went in


async def test_event_of_a_few_megabytes_round_trips(store: EventStore) -> None:
    body = bytes(range(256)) * (4 * 4096)  # 4 MiB, every byte value
    await store.append(event("big", body=body))
    [read] = await store.read_after(REPO_A, 0)
    assert read.body == body


# ---- cursors -----------------------------------------------------------------------------------


async def test_cursor_is_none_until_set_and_never_moves_back(store: EventStore) -> None:
    for i in range(1, 6):
        await store.append(event(f"d{i}"))
    assert await store.get_cursor("ci", REPO_A) is None

    await store.set_cursor("ci", REPO_A, 3)
    assert await store.get_cursor("ci", REPO_A) == 3
    await store.set_cursor("ci", REPO_A, 1)
    assert await store.get_cursor("ci", REPO_A) == 3
    await store.set_cursor("ci", REPO_A, 5)
    assert await store.get_cursor("ci", REPO_A) == 5

    # Per client id and per repository.
    assert await store.get_cursor("other", REPO_A) is None
    assert await store.get_cursor("ci", REPO_B) is None
    await store.set_cursor("other", REPO_A, 2)
    assert (await store.get_cursor("ci", REPO_A), await store.get_cursor("other", REPO_A)) == (5, 2)


async def test_many_cursors_set_at_once_each_never_move_back(store: EventStore) -> None:
    for i in range(1, 6):
        await store.append(event(f"a{i}"))
        await store.append(event(f"b{i}", REPO_B))
    await store.set_cursor("ci", REPO_A, 4)

    # The dispatcher's acknowledgements of many client ids and repositories, gathered into one call.
    await store.set_cursors({("ci", REPO_A): 2, ("ci", REPO_B): 3, ("other", REPO_A): 5, ("new", "42"): 0})
    await store.set_cursors({})
    cursors = [await store.get_cursor(c, r) for c, r in [("ci", REPO_A), ("ci", REPO_B), ("other", REPO_A)]]
    assert cursors == [4, 3, 5]
    assert await store.get_cursor("other", REPO_B) is None
    # A subscription to a repository without events yet is known afterwards, as with set_cursor.
    assert await store.get_cursor("new", "42") == 0
    assert "42" in {state.repository_id for state in await store.repositories()}


async def test_start_cursor(store: EventStore) -> None:
    # A repository with nothing stored: a new client waits for the first event.
    assert await store.start_cursor("new", REPO_A) == 0

    for i in range(1, 5):
        await store.append(event(f"d{i}", received_at_ns=NOW_NS - 100 * S_NS))
    assert await store.start_cursor("new", REPO_A) == 0

    # A known client resumes after its cursor.
    await store.set_cursor("known", REPO_A, 3)
    assert await store.start_cursor("known", REPO_A) == 3

    # A new client starts just before the oldest event still retained.
    assert await store.prune(NOW_NS, retention_s=10, max_age_s=1000) == 3
    assert await sequences(store, REPO_A) == [4]
    assert await store.start_cursor("new", REPO_A) == 3
    assert [e.sequence for e in await store.read_after(REPO_A, await store.start_cursor("new", REPO_A))] == [4]

    # Everything pruned: a new client starts after the last sequence ever given.
    assert await store.prune(NOW_NS, retention_s=10, max_age_s=50) == 1
    assert await store.start_cursor("new", REPO_A) == 4


# ---- dead letters ------------------------------------------------------------------------------


async def test_dead_letters_are_listed_per_repository(store: EventStore) -> None:
    assert await store.dead_letters() == []
    letters = [
        DeadLetter("ci", REPO_A, 1, "d1", "target answered 404", 404, NOW_NS + 1),
        DeadLetter("ci", REPO_B, 1, "e1", "target answered 410", 410, NOW_NS + 2),
        DeadLetter("other", REPO_A, 2, "d2", "gave up after 7d: connection refused", 0, NOW_NS + 3),
    ]
    for letter in letters:
        await store.add_dead_letter(letter)

    assert await store.dead_letters(REPO_A) == [letters[0], letters[2]]
    assert await store.dead_letters(REPO_B) == [letters[1]]
    assert await store.dead_letters("999") == []
    assert await store.dead_letters() == letters


# ---- repositories ------------------------------------------------------------------------------


async def test_repositories_report_counts_bounds_and_cursors(store: EventStore) -> None:
    assert await store.repositories() == []
    for i in range(1, 4):
        await store.append(event(f"a{i}", REPO_A, received_at_ns=NOW_NS - 100 * S_NS))
    await store.append(event("b1", REPO_B, name="Octocoders/Hello-World"))
    await store.set_cursor("ci", REPO_A, 3)
    await store.set_cursor("ci", REPO_B, 1)
    await store.set_cursor("other", REPO_A, 1)
    await store.set_cursor("ci", "42", 0)  # a subscription to a repository that has no events yet

    states = {s.repository_id: s for s in await store.repositories()}
    assert set(states) == {REPO_A, REPO_B, "42"}
    a, b, empty = states[REPO_A], states[REPO_B], states["42"]
    assert (a.repository_name, a.event_count, a.first_sequence, a.last_sequence) == ("Codertocat/Hello-World", 3, 1, 3)
    assert dict(a.cursors) == {"ci": 3, "other": 1}
    assert (b.repository_name, b.event_count, b.first_sequence, b.last_sequence) == ("Octocoders/Hello-World", 1, 1, 1)
    assert dict(b.cursors) == {"ci": 1}
    assert (empty.event_count, empty.last_sequence) == (0, 0)
    assert empty.first_sequence > empty.last_sequence

    await store.prune(NOW_NS, retention_s=10, max_age_s=1000)
    a = await store.repository(REPO_A)
    assert a is not None
    assert (a.event_count, a.first_sequence, a.last_sequence) == (2, 2, 3)
    assert await store.resolve_repository("octocoders/hello-world") == REPO_B
    assert await store.resolve_repository(REPO_A) == REPO_A
    assert await store.resolve_repository("nobody/nothing") is None


# ---- prune -------------------------------------------------------------------------------------


async def test_prune_removes_events_acknowledged_by_every_client_past_retention(store: EventStore) -> None:
    for i in range(1, 5):
        await store.append(event(f"old{i}", received_at_ns=NOW_NS - 100 * S_NS))
    await store.append(event("recent", received_at_ns=NOW_NS - 1 * S_NS))
    await store.set_cursor("fast", REPO_A, 5)
    await store.set_cursor("slow", REPO_A, 2)

    assert await store.prune(NOW_NS, retention_s=10, max_age_s=1000) == 2
    assert await sequences(store, REPO_A) == [3, 4, 5]

    # Once the slow client catches up, the old events go; the recent one stays within retention.
    await store.set_cursor("slow", REPO_A, 5)
    assert await store.prune(NOW_NS, retention_s=10, max_age_s=1000) == 2
    assert await sequences(store, REPO_A) == [5]
    assert await store.prune(NOW_NS, retention_s=10, max_age_s=1000) == 0
    assert await sequences(store, REPO_A) == [5]


async def test_prune_keeps_unacknowledged_events_until_max_age(store: EventStore) -> None:
    for i in range(1, 4):
        await store.append(event(f"d{i}", received_at_ns=NOW_NS - 100 * S_NS))
    await store.append(event("young", received_at_ns=NOW_NS - 1 * S_NS))
    await store.set_cursor("ci", REPO_A, 1)
    # A repository no client has subscribed to yet.
    await store.append(event("b1", REPO_B, received_at_ns=NOW_NS - 100 * S_NS))

    assert await store.prune(NOW_NS, retention_s=10, max_age_s=1000) == 1
    assert await sequences(store, REPO_A) == [2, 3, 4]
    assert await sequences(store, REPO_B) == [1]

    # Past the maximum age, acknowledged or not, with or without clients, they go.
    assert await store.prune(NOW_NS, retention_s=10, max_age_s=50) == 3
    assert await sequences(store, REPO_A) == [4]
    assert await sequences(store, REPO_B) == []


async def test_sequences_are_not_reused_after_pruning_everything(store: EventStore) -> None:
    for i in range(1, 4):
        await store.append(event(f"d{i}", received_at_ns=NOW_NS - 100 * S_NS))
    assert await store.prune(NOW_NS, retention_s=10, max_age_s=50) == 3
    assert await store.read_after(REPO_A, 0) == []

    result = await store.append(event("d4"))
    assert result.event.sequence == 4
    assert await sequences(store, REPO_A) == [4]


async def test_sequences_are_not_reused_after_pruning_everything_and_reopening(persistent_backend: Backend) -> None:
    async with persistent_backend.new() as store:
        for i in range(1, 4):
            await store.append(event(f"d{i}", received_at_ns=NOW_NS - 100 * S_NS))
        assert await store.prune(NOW_NS, retention_s=10, max_age_s=50) == 3

    async with persistent_backend.new() as store:
        assert await store.start_cursor("new", REPO_A) == 3
        result = await store.append(event("d4"))
        assert result.event.sequence == 4
        assert await sequences(store, REPO_A) == [4]


async def test_everything_survives_close_and_reopen(persistent_backend: Backend) -> None:
    sent = [event(f"a{i}", REPO_A, received_at_ns=NOW_NS + i) for i in range(1, 4)] + [event("b1", REPO_B)]
    letter = DeadLetter("ci", REPO_A, 2, "a2", "target answered 422", 422, NOW_NS)
    async with persistent_backend.new() as store:
        for e in sent:
            await store.append(e)
        await store.set_cursor("ci", REPO_A, 2)
        await store.add_dead_letter(letter)
        before = await store.repositories()

    async with persistent_backend.new() as store:
        assert await store.repositories() == before
        assert [e.with_sequence(0) for e in await store.read_after(REPO_A, 0)] == sent[:3]
        assert [e.with_sequence(0) for e in await store.read_after(REPO_B, 0)] == sent[3:]
        assert await store.get_cursor("ci", REPO_A) == 2
        assert await store.dead_letters() == [letter]
        # Duplicates are still recognised, and numbering goes on.
        assert (await store.append(event("a2", REPO_A))).created is False
        assert (await store.append(event("a4", REPO_A))).event.sequence == 4
        # The wake-up knows what was stored before the restart.
        assert await store.wait_for_events(REPO_A, 3, timeout=0) is True


# ---- waiting for events ------------------------------------------------------------------------


async def settle(task: asyncio.Task[bool], rounds: int = 20) -> None:
    """Let the event loop run a few rounds, without any timer, so a woken task can finish."""
    for _ in range(rounds):
        if task.done():
            return
        await asyncio.sleep(0)


async def test_wait_for_events_wakes_when_an_event_is_appended(store: EventStore) -> None:
    await store.append(event("d1"))
    waiters = [
        asyncio.create_task(store.wait_for_events(REPO_A, 1, timeout=None)),
        asyncio.create_task(store.wait_for_events(REPO_A, 1, timeout=None)),
    ]
    other_repository = asyncio.create_task(store.wait_for_events(REPO_B, 0, timeout=None))
    await settle(waiters[0])
    assert not any(w.done() for w in waiters)

    await store.append(event("d2"))
    # Woken by the append itself: no timer has to run out (the waits have none).
    for waiter in waiters:
        await settle(waiter)
        assert waiter.done() and waiter.result() is True
    assert not other_repository.done()
    other_repository.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other_repository


async def test_wait_for_events_returns_at_once_when_events_are_there(store: EventStore) -> None:
    await store.append(event("d1"))
    await store.append(event("d2"))
    assert await store.wait_for_events(REPO_A, 0, timeout=0) is True
    assert await store.wait_for_events(REPO_A, 1, timeout=None) is True


async def test_wait_for_events_times_out_with_false(store: EventStore) -> None:
    assert await store.wait_for_events(REPO_A, 0, timeout=0.05) is False
    await store.append(event("d1"))
    assert await store.wait_for_events(REPO_A, 1, timeout=0.05) is False
    # A duplicate is no new event.
    waiter = asyncio.create_task(store.wait_for_events(REPO_A, 1, timeout=0.2))
    await settle(waiter)
    await store.append(event("d1"))
    assert await waiter is False


async def test_wait_for_events_is_not_satisfied_by_an_earlier_sequence(store: EventStore) -> None:
    await store.append(event("d1"))
    waiter = asyncio.create_task(store.wait_for_events(REPO_A, 2, timeout=None))
    await settle(waiter)
    await store.append(event("d2"))  # sequence 2: still nothing after 2
    await settle(waiter)
    assert not waiter.done()

    await store.append(event("d3"))
    await settle(waiter)
    assert waiter.done() and waiter.result() is True


async def test_wait_any_wakes_on_an_event_of_any_repository_or_one_since_the_mark(store: EventStore) -> None:
    assert await store.wait_any(timeout=0.05) is False
    mark = store.changes()
    await store.append(event("d1", REPO_B))
    # Stored after the mark was taken: the wait that follows returns at once.
    assert await store.wait_any(timeout=None, since=mark) is True
    waiter = asyncio.create_task(store.wait_any(timeout=None, since=store.changes()))
    await settle(waiter)
    assert not waiter.done()
    await store.append(event("d2"))
    await settle(waiter)
    assert waiter.done() and waiter.result() is True


async def test_stop_waiters_wakes_every_waiter_for_good(store: EventStore) -> None:
    waiters = [
        asyncio.create_task(store.wait_for_events(REPO_A, 0, timeout=None)),
        asyncio.create_task(store.wait_for_streamable(REPO_A, 0, timeout=None)),
        asyncio.create_task(store.wait_any(timeout=None)),
    ]
    await settle(waiters[0])
    assert not store.closed and not any(w.done() for w in waiters)
    store.stop_waiters()
    for waiter in waiters:
        await settle(waiter)
        assert waiter.done() and waiter.result() is False
    assert store.closed
    assert await store.wait_any(timeout=None) is False
    # Still usable for the last writes before aclose().
    await store.set_cursor("ci", REPO_A, 0)


async def test_each_backend_names_its_kind(backend: Backend) -> None:
    assert backend.new().kind == backend.name.split("-")[0]


async def test_replays_are_kept_per_client_until_settled(store: EventStore) -> None:
    for name in ("d1", "d2", "d3"):
        await store.append(event(name))
    letter = DeadLetter("ci", REPO_A, 2, "d2", "target answered 404", 404, NOW_NS)
    await store.add_dead_letter(letter)
    await store.add_replays("ci", REPO_A, [3, 2])
    await store.add_replays("ci", REPO_A, [2])  # asking twice keeps one request
    assert await store.replays("ci", REPO_A) == [2, 3]
    assert await store.replays("other", REPO_A) == []

    # Failed again: the request goes, the dead letter stays.
    await store.settle_replay("ci", REPO_A, 3, delivered=False)
    assert await store.replays("ci", REPO_A) == [2]
    # Delivered: the request and the dead letter go.
    await store.settle_replay("ci", REPO_A, 2, delivered=True)
    assert await store.replays("ci", REPO_A) == []
    assert await store.dead_letters(REPO_A) == []


async def test_event_at_finds_retained_events_only(store: EventStore) -> None:
    await store.append(event("d1"))
    await store.append(event("d2"))
    found = await store.event_at(REPO_A, 2)
    assert found is not None and found.delivery_id == "d2"
    assert await store.event_at(REPO_A, 3) is None
    assert await store.event_at(REPO_B, 1) is None


async def test_replays_survive_a_reopen(persistent_backend: Backend) -> None:
    async with persistent_backend.new() as store:
        await store.append(event("d1"))
        await store.add_replays("ci", REPO_A, [1])
    async with persistent_backend.new() as store:
        assert await store.replays("ci", REPO_A) == [1]


# ---- audit -------------------------------------------------------------------------------------


async def test_audit_is_kept_per_event_in_the_order_recorded(store: EventStore) -> None:
    for name in ("d1", "d2", "d3"):
        await store.append(event(name))
    await store.append(event("b1", REPO_B))
    assert await store.audit(REPO_A) == []
    first = [
        AuditRecord("ci", REPO_A, 2, "sent", NOW_NS + 1),
        AuditRecord("ci", REPO_A, 1, "sent", NOW_NS + 2),
        AuditRecord("other", REPO_A, 1, "sent", NOW_NS + 3),
        AuditRecord("ci", REPO_B, 1, "sent", NOW_NS + 4),
    ]
    second = [
        AuditRecord("ci", REPO_A, 1, "acknowledged", NOW_NS + 5),
        AuditRecord("other", REPO_A, 1, "failed", NOW_NS + 6),
        AuditRecord("ci", REPO_A, 2, "acknowledged", NOW_NS + 7),
    ]
    await store.add_audit(first)
    await store.add_audit(second)
    await store.add_audit([])

    assert await store.audit(REPO_A) == [first[1], first[2], second[0], second[1], first[0], second[2]]
    assert await store.audit(REPO_B) == [first[3]]
    assert await store.audit("999") == []
    # one event's records alone, in the same order
    assert await store.audit(REPO_A, 1) == [first[1], first[2], second[0], second[1]]
    assert await store.audit(REPO_A, 2) == [first[0], second[2]]
    assert await store.audit(REPO_A, 3) == []
    assert await store.audit(REPO_B, 2) == []


async def test_audit_of_pruned_events_goes_with_them(store: EventStore) -> None:
    for i in range(1, 4):
        await store.append(event(f"d{i}", received_at_ns=NOW_NS - 100 * S_NS))
    await store.add_audit([AuditRecord("ci", REPO_A, i, "acknowledged", NOW_NS + i) for i in range(1, 4)])
    await store.set_cursor("ci", REPO_A, 2)

    assert await store.prune(NOW_NS, retention_s=10, max_age_s=1000) == 2
    assert [r.sequence for r in await store.audit(REPO_A)] == [3]
    assert await store.audit(REPO_A, 1) == []


async def test_audit_survives_a_reopen(persistent_backend: Backend) -> None:
    record = AuditRecord("ci", REPO_A, 1, "sent", NOW_NS)
    async with persistent_backend.new() as store:
        await store.append(event("d1"))
        await store.add_audit([record])
    async with persistent_backend.new() as store:
        assert await store.audit(REPO_A) == [record]
