"""The SQLite store's filter of stored deliveries: a new delivery is stored without a lookup in the file, a
repeat is still found, before and after a restart, and nothing is stored twice when the filter errs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gitstafette.store.sqlite import SQLiteStore, deliveries
from tests.store.test_store_suite import REPO_A, event


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(str(tmp_path / "events.db")) as opened:
        assert isinstance(opened, SQLiteStore)
        yield opened


def _count_lookups(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    looked_up: list[str] = []
    lookup = store._stored_sequence

    def counted(stored: Any) -> int | None:
        looked_up.append(stored.delivery_id)
        return lookup(stored)

    monkeypatch.setattr(store, "_stored_sequence", counted)
    return looked_up


async def _stored(store: SQLiteStore, streamable: bool = False) -> list[tuple[int, str]]:
    """Every committed (or streamable) event, read as a stream does: after the last one, until none is left."""
    read = store.read_streamable_after if streamable else store.read_after
    found: list[tuple[int, str]] = []
    while events := await read(REPO_A, found[-1][0] if found else 0):
        found.extend((e.sequence, e.delivery_id) for e in events)
    return found


class _Always:
    """A stand-in filter that answers the same for every delivery."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.full = False

    def __contains__(self, key: object) -> bool:
        return self.answer

    def add(self, key: object) -> None:
        pass


async def test_new_deliveries_are_stored_without_a_lookup_and_a_repeat_is_found(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up = _count_lookups(store, monkeypatch)
    for n in range(100):
        assert (await store.append(event(f"d-{n}"))).created
    assert looked_up == [], "a delivery the filter has never seen needs no lookup"

    repeat = await store.append(event("d-42"))
    assert not repeat.created and repeat.event.sequence == 43
    assert looked_up == ["d-42"]
    assert len(await _stored(store)) == 100


async def test_a_delivery_stored_before_a_restart_is_found_after_it(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    async with SQLiteStore(path) as first:
        await first.append(event("d-1"))
        await first.append(event("d-2"))
    async with SQLiteStore(path) as second:
        assert isinstance(second, SQLiteStore)
        assert (REPO_A, "d-1") in second._deliveries, "read from the file at startup"
        repeat = await second.append(event("d-1"))
        assert not repeat.created and repeat.event.sequence == 1
        assert (await second.append(event("d-3"))).event.sequence == 3
        assert await _stored(second) == [(1, "d-1"), (2, "d-2"), (3, "d-3")]


async def test_a_false_positive_costs_a_lookup_and_nothing_else(store: SQLiteStore) -> None:
    store._deliveries = _Always(True)  # type: ignore[assignment]
    stored = await store.append(event("d-1"))
    assert stored.created and stored.event.sequence == 1
    assert await _stored(store) == [(1, "d-1")]


async def test_a_filter_that_missed_a_stored_delivery_still_stores_it_once(store: SQLiteStore) -> None:
    await store.append(event("d-1"))
    store._deliveries = _Always(False)  # type: ignore[assignment]
    repeat = await store.append(event("d-1"))
    assert not repeat.created and repeat.event.sequence == 1
    # The number it was streamed under stays unused, as after a failed commit.
    assert (await store.append(event("d-3"))).event.sequence == 3
    assert await _stored(store) == [(1, "d-1"), (3, "d-3")]
    assert await _stored(store, streamable=True) == [(1, "d-1"), (3, "d-3")]


async def test_deliveries_stored_while_the_filter_is_rebuilt_stay_in_it(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store._deliveries = deliveries.StoredDeliveries((), 0, min_capacity=4)  # capacity 4 from now on
    read = deliveries.StoredDeliveries.read
    scanned = threading.Event()
    release = threading.Event()

    def read_then_wait(cls: type[deliveries.StoredDeliveries], connection: Any) -> Any:
        fresh = read(connection, min_capacity=4)  # what is committed now; what comes next the rebuild must add itself
        scanned.set()
        release.wait(10)
        return fresh

    monkeypatch.setattr(deliveries.StoredDeliveries, "read", classmethod(read_then_wait))
    for n in range(5):  # the fifth goes beyond the capacity: the rebuild starts
        await store.append(event(f"d-{n}"))
    old = store._deliveries
    assert store._rebuilding is not None
    assert await asyncio.to_thread(scanned.wait, 10)
    for n in range(5, 10):  # stored after the rebuild read the file
        await store.append(event(f"d-{n}"))
    release.set()
    await asyncio.wait_for(asyncio.shield(store._rebuilding), 10)

    assert store._deliveries is not old and store._rebuilding is None
    assert all((REPO_A, f"d-{n}") in store._deliveries for n in range(10))
    looked_up = _count_lookups(store, monkeypatch)
    for n in range(10):
        repeat = await store.append(event(f"d-{n}"))
        assert not repeat.created and repeat.event.sequence == n + 1
    assert len(looked_up) == 10
    assert len(await _stored(store)) == 10
