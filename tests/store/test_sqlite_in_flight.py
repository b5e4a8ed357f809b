"""SQLite hands a new event to the acknowledged stream while its commit is in flight, and stays safe.

The writer thread's connection is swapped for one whose ``COMMIT`` waits on a gate (or fails), so the
moment between "the event has its sequence" and "the event is on disk" can be held open and looked at.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gitstafette.exceptions import StoreError
from gitstafette.model import WebhookEvent
from gitstafette.store.sqlite import SQLiteStore, schema
from tests.store.test_store_suite import REPO_A, event


class _Gate:
    """What the writer's ``COMMIT`` does: pass, wait until opened, or fail once."""

    def __init__(self) -> None:
        self.closed = False
        self.opened = threading.Event()
        self.waiting = threading.Event()
        self.fail_next = False


class _GatedConnection(sqlite3.Connection):
    gate: _Gate

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.in_transaction:
            gate = type(self).gate
            if gate.closed:
                gate.waiting.set()
                gate.opened.wait(10)
            if gate.fail_next:
                gate.fail_next = False
                raise sqlite3.OperationalError("disk I/O error (induced by the test)")
        return super().execute(sql, *args)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Gate]:
    gate = _Gate()
    connect = schema.connect

    def gated_connect(path: str) -> sqlite3.Connection:
        connection = connect(path)
        connection.close()
        _GatedConnection.gate = gate
        gated = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=_GatedConnection)
        gated.execute("PRAGMA journal_mode=WAL")
        return gated

    # Only the writer's connection matters: it is the one opened first (readers connect lazily).
    monkeypatch.setattr(schema, "connect", gated_connect)
    yield gate
    gate.opened.set()


@pytest.fixture
async def store(tmp_path: Path, gate: _Gate) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(str(tmp_path / "events.db")) as opened:
        assert isinstance(opened, SQLiteStore)
        yield opened


async def _read_all(read: Callable[[str, int], Awaitable[list[WebhookEvent]]]) -> list[tuple[int, str]]:
    """Every event a reader gives, read as the streams do: after the last one, until none is left."""
    found: list[tuple[int, str]] = []
    while events := await read(REPO_A, found[-1][0] if found else 0):
        found.extend((e.sequence, e.delivery_id) for e in events)
    return found


async def _wait_until_streamable(store: SQLiteStore, after: int) -> None:
    assert await store.wait_for_streamable(REPO_A, after, timeout=10), "the event never became streamable"


async def test_an_event_is_streamable_before_its_commit_and_readable_after(store: SQLiteStore, gate: _Gate) -> None:
    gate.closed = True
    appending = asyncio.create_task(store.append(event("d-1")))
    await _wait_until_streamable(store, 0)
    # The event is streamable before the writer even inserts it: the COMMIT starts a moment later.
    assert await asyncio.to_thread(gate.waiting.wait, 10), "the commit never started"

    streamed = await store.read_streamable_after(REPO_A, 0)
    assert [(e.sequence, e.delivery_id) for e in streamed] == [(1, "d-1")]
    # Everything else sees committed events only: the original FetchWebhookEvents, the REST API.
    assert await store.read_after(REPO_A, 0) == []
    assert store.committed.latest(REPO_A) == 0
    assert not appending.done(), "append (and so the 201) must wait for the commit"

    gate.opened.set()
    result = await appending
    assert result.created and result.event.sequence == 1
    assert [e.delivery_id for e in await store.read_after(REPO_A, 0)] == ["d-1"]


@contextmanager
def _writer_held(store: SQLiteStore) -> Iterator[None]:
    """Keep the writer thread busy (a queued write that waits) until the block ends."""
    release = threading.Event()
    started = threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    store._writer.queue(hold)
    assert started.wait(10), "the writer never took the holding write"
    try:
        yield
    finally:
        release.set()


async def test_an_event_is_streamable_before_the_writer_inserts_it(store: SQLiteStore) -> None:
    with _writer_held(store):
        appending = asyncio.create_task(store.append(event("d-1")))
        await _wait_until_streamable(store, 0)
        assert [e.delivery_id for e in await store.read_streamable_after(REPO_A, 0)] == ["d-1"]
        assert await store.read_after(REPO_A, 0) == []
        assert not appending.done()
    assert (await appending).event.sequence == 1
    assert [e.delivery_id for e in await store.read_after(REPO_A, 0)] == ["d-1"]


async def test_a_copy_waiting_on_a_failed_commit_fails_too(store: SQLiteStore, gate: _Gate) -> None:
    gate.closed = True
    first = asyncio.create_task(store.append(event("d-1")))
    assert await asyncio.to_thread(gate.waiting.wait, 10), "the commit never started"
    again = asyncio.create_task(store.append(event("d-1")))
    await asyncio.sleep(0.01)
    gate.fail_next = True  # the commit with the first copy's insert fails
    gate.opened.set()
    for appending in (first, again):
        with pytest.raises(StoreError):
            await appending  # both get a 503: GitHub sends the delivery again
    result = await store.append(event("d-1"))
    assert result.created and result.event.sequence == 2, "the lost #1 stays unused"
    assert await _read_all(store.read_streamable_after) == [(2, "d-1")]


async def test_a_copy_sent_again_while_the_first_is_stored_gets_its_sequence(store: SQLiteStore, gate: _Gate) -> None:
    gate.closed = True
    first = asyncio.create_task(store.append(event("d-1")))
    await _wait_until_streamable(store, 0)
    again = asyncio.create_task(store.append(event("d-1")))  # GitHub's redelivery, or a retry of the sender
    await asyncio.sleep(0.05)
    assert not again.done(), "the copy must wait for the first one's commit, not be taken for new"
    gate.opened.set()
    stored, repeated = await first, await again
    assert stored.created and stored.event.sequence == 1
    assert not repeated.created and repeated.event.sequence == 1
    assert await _read_all(store.read_after) == [(1, "d-1")]
    assert store.streamable.latest(REPO_A) == 1


async def test_a_failed_commit_never_gives_its_sequence_again(store: SQLiteStore, gate: _Gate) -> None:
    await store.append(event("d-1"))
    gate.fail_next = True
    with pytest.raises(StoreError):
        await store.append(event("d-2"))  # sequence 2 was streamable for a moment, then not stored

    result = await store.append(event("d-3"))
    assert result.event.sequence == 3, "an event streamed as #2 may have been delivered: #2 stays unused"
    for read in (store.read_after, store.read_streamable_after):
        assert await _read_all(read) == [(1, "d-1"), (3, "d-3")]
    # The failed one is gone from memory too: a stream starting at #2 gets #3, not the lost event.
    assert [e.delivery_id for e in await store.read_streamable_after(REPO_A, 1)] == ["d-3"]


async def test_a_cursor_is_never_stored_beyond_the_committed_events(store: SQLiteStore, gate: _Gate) -> None:
    await store.append(event("d-1"))
    gate.closed = True
    appending = asyncio.create_task(store.append(event("d-2")))
    await _wait_until_streamable(store, 1)
    # The client acknowledges #2 before its commit: the cursor write queues behind that commit.
    setting = asyncio.create_task(store.set_cursor("ci", REPO_A, 2))
    gate.opened.set()
    await appending
    await setting
    assert await store.get_cursor("ci", REPO_A) == 2

    # An acknowledgement of a sequence that was never committed (its commit failed, or a crash took it)
    # moves the cursor only as far as what is stored: the next event, under that number after a
    # restart, is not taken for acknowledged.
    await store.set_cursor("ci", REPO_A, 5)
    assert await store.get_cursor("ci", REPO_A) == 2
    await store.set_cursor("new-client", "no-events-yet", 3)
    assert await store.get_cursor("new-client", "no-events-yet") == 0
    # The same for the cursors of many client ids written together.
    await store.set_cursors({("ci", REPO_A): 5, ("other", REPO_A): 9, ("other", "no-events-yet"): 1})
    assert [await store.get_cursor(c, REPO_A) for c in ("ci", "other")] == [2, 2]
    assert await store.get_cursor("other", "no-events-yet") == 0
