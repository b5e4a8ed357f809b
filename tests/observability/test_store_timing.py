"""The store-latency histogram counts each operation called from outside once, under its own name, also
when a backend does one through another (SQLite's and Redis's set_cursor go through set_cursors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitstafette.server.metrics import ServerMetrics
from gitstafette.store import EventStore
from gitstafette.store.memory import MemoryStore
from gitstafette.store.sqlite import SQLiteStore


def _counts(metrics: ServerMetrics) -> dict[str, float]:
    return {
        sample.labels["operation"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "gitstafette_store_operation_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_each_cursor_write_counts_once_under_its_own_name(backend: str, tmp_path: Path) -> None:
    store: EventStore = MemoryStore() if backend == "memory" else SQLiteStore(str(tmp_path / "events.db"))
    await store.open()
    try:
        metrics = ServerMetrics(store, streams=lambda: 0, live_cursors=dict)
        metrics.time_store(store)
        await store.set_cursor("ci", "537845873", 0)
        await store.set_cursors({("ci", "537845873"): 0, ("cd", "537845873"): 0})
        await store.set_cursor("cd", "537845873", 0)
        counts = _counts(metrics)
        assert counts["set_cursor"] == 2
        assert counts["set_cursors"] == 1
    finally:
        await store.aclose()
