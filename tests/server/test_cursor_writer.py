"""The dispatcher writes the cursors that acknowledgements moved behind the streams: those of every client id
that moved while a write was in flight go to the store together, in one ``set_cursors`` call."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from gitstafette.server.cursor_writer import CursorWriter
from gitstafette.store.memory import MemoryStore

REPO = "186853002"


class GatedStore(MemoryStore):
    """Records each ``set_cursors`` call, and holds it until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[tuple[str, str], int]] = []
        self.gate = asyncio.Event()
        self.fail = False

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        self.calls.append(dict(cursors))
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("the store is away")
        await super().set_cursors(cursors)


async def test_cursors_moved_during_a_write_go_together_in_the_next() -> None:
    store = GatedStore()
    writer = CursorWriter(store)
    writer.put("c0", REPO, 1)
    await asyncio.sleep(0)  # the first write starts, and waits at the gate
    for i in range(100):
        writer.put(f"c{i}", REPO, 2)
    writer.put("c5", REPO, 3)  # moved twice meanwhile: its latest cursor is written
    store.gate.set()
    await writer.flush()
    assert len(store.calls) == 2
    assert store.calls[0] == {("c0", REPO): 1}
    assert len(store.calls[1]) == 100 and store.calls[1][("c5", REPO)] == 3
    assert [await store.get_cursor(f"c{i}", REPO) for i in (0, 5, 99)] == [2, 3, 2]


async def test_flush_waits_for_what_was_put_before_it_only() -> None:
    store = GatedStore()
    writer = CursorWriter(store)
    await writer.flush()  # nothing to write: returns at once
    writer.put("c", REPO, 1)
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done(), "returned before its cursor was written"
    store.gate.set()
    await flushing
    assert await store.get_cursor("c", REPO) == 1


async def test_a_failed_write_is_logged_and_the_next_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    store = GatedStore()
    store.fail = True
    store.gate.set()
    writer = CursorWriter(store)
    writer.put("c", REPO, 1)
    await writer.flush()
    assert "cannot save 1 cursors" in caplog.text
    store.fail = False
    writer.put("c", REPO, 2)
    await writer.flush()
    assert await store.get_cursor("c", REPO) == 2
