"""The store-latency histogram counts each operation called from outside once, under its own name, also
when a backend does one through another (SQLite's and Redis's set_cursor go through set_cursors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitstafette.model import WebhookEvent
from gitstafette.server.metrics import STORE_OPERATIONS, ServerMetrics, TimedStore
from gitstafette.store import EventStore
from gitstafette.store.memory import MemoryStore
from gitstafette.store.sqlite import SQLiteStore

REPO = "537845873"


def _counts(metrics: ServerMetrics) -> dict[str, float]:
    return {
        sample.labels["operation"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "gitstafette_store_operation_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_each_timed_operation_counts_once_and_the_others_are_handed_over(backend: str, tmp_path: Path) -> None:
    store: EventStore = MemoryStore() if backend == "memory" else SQLiteStore(str(tmp_path / "events.db"))
    metrics = ServerMetrics(store, streams=lambda: 0, live_cursors=dict)
    timed = metrics.store
    assert isinstance(timed, TimedStore) and timed.inner is store
    assert (timed.url, timed.kind) == (store.url, store.kind)
    async with timed:
        appended = await timed.append(WebhookEvent(REPO, "d1", "push", b"{}", (), 1, "Codertocat/Hello-World"))
        assert await timed.read_after(REPO, 0) == [appended.event]
        assert await timed.read_streamable_after(REPO, 0) == [appended.event]
        assert await timed.event_at(REPO, 1) == appended.event  # not timed: read_after is not counted again
        assert await timed.wait_for_events(REPO, 0, timeout=0) is True
        assert await timed.resolve_repository("Codertocat/Hello-World") == REPO
        mark = timed.changes()
        timed.stop_waiters()
        assert timed.closed and store.closed
        assert await timed.wait_any(timeout=None, since=mark) is False
    counts = _counts(metrics)
    assert {name: counts[name] for name in ("append", "read_after", "read_streamable_after")} == {
        "append": 1,
        "read_after": 1,
        "read_streamable_after": 1,
    }
    assert set(counts) == set(STORE_OPERATIONS)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_each_cursor_write_counts_once_under_its_own_name(backend: str, tmp_path: Path) -> None:
    store: EventStore = MemoryStore() if backend == "memory" else SQLiteStore(str(tmp_path / "events.db"))
    await store.open()
    try:
        metrics = ServerMetrics(store, streams=lambda: 0, live_cursors=dict)
        timed = metrics.store
        await timed.set_cursor("ci", "537845873", 0)
        await timed.set_cursors({("ci", "537845873"): 0, ("cd", "537845873"): 0})
        await timed.set_cursor("cd", "537845873", 0)
        counts = _counts(metrics)
        assert counts["set_cursor"] == 2
        assert counts["set_cursors"] == 1
    finally:
        await store.aclose()
