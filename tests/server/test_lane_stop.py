"""Lane.stop ends its lane's task; a cancellation of whoever awaits it goes on past it; a connection that leaves
hands its repositories over, and gives each lease up only once its acknowledgements are stored."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from gitstafette.server.cursor_writer import CursorWriter
from gitstafette.server.dispatch import Dispatcher, Outgoing
from gitstafette.server.lane import DEFAULT_WINDOW, Lane, LaneContext, Progress
from gitstafette.store import Lease
from gitstafette.store.memory import MemoryStore
from tests.store.test_store_suite import REPO_A, event


def _lane(task_body: Any) -> Lane:
    store = MemoryStore()
    context = LaneContext(store, CursorWriter(store), DEFAULT_WINDOW)
    lane = Lane("c", "537845873", context, SimpleNamespace(id=1), Progress(), lambda lane: None)  # type: ignore[arg-type]
    lane.task = asyncio.create_task(task_body())
    return lane


async def test_stop_cancels_the_lane_and_returns() -> None:
    ran = asyncio.Event()

    async def serve() -> None:
        ran.set()
        await asyncio.sleep(3600)

    lane = _lane(serve)
    await ran.wait()
    await lane.stop()
    assert lane.task is not None and lane.task.cancelled()


async def test_a_cancellation_of_the_caller_is_not_swallowed() -> None:
    winding_down = asyncio.Event()
    release = asyncio.Event()

    async def serve() -> None:  # a lane that takes a moment to wind down once cancelled
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            winding_down.set()
            await release.wait()
            raise

    lane = _lane(serve)
    await asyncio.sleep(0)
    stopping = asyncio.create_task(lane.stop())
    await winding_down.wait()
    stopping.cancel()  # e.g. the server shutting down while a connection leaves
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()


async def test_a_leaving_connection_hands_its_repositories_over_even_when_its_handler_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    await store.open()
    dispatcher = Dispatcher(store)
    leaving = dispatcher.connect("ci", ["537845873"])
    staying = dispatcher.connect("ci", ["537845873"])
    assert leaving.serving() == ["537845873"] and staying.serving() == []

    stop = Lane.stop
    stopping = asyncio.Event()

    async def slow_stop(lane: Lane) -> None:  # a lane that takes a moment to stop (its last cursor write)
        stopping.set()
        await asyncio.sleep(0.05)
        await stop(lane)

    monkeypatch.setattr(Lane, "stop", slow_stop)
    handler = asyncio.create_task(dispatcher.disconnect(leaving))
    await stopping.wait()
    handler.cancel()  # gRPC cancels the stream's handler while it disconnects
    with pytest.raises(asyncio.CancelledError):
        await handler
    for _ in range(100):
        if staying.serving() == ["537845873"]:
            break
        await asyncio.sleep(0.01)
    assert staying.serving() == ["537845873"], "the other connection of the client id never took over"
    for lane in staying.lanes.values():
        await lane.stop()
    await store.aclose()


class _RecordingStore(MemoryStore):
    """A store whose cursor writes wait on a gate, and which records when cursors and leases reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[object] = []
        self.gate = asyncio.Event()

    def lease(self, client_id: str, repository_id: str, holder: str) -> Lease:
        store = self

        class Recorded(Lease):
            async def release(self) -> None:
                store.log.append("lease released")

        return Recorded(client_id, repository_id, holder)

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        await self.gate.wait()
        await super().set_cursors(cursors)
        self.log.append(dict(cursors))


async def test_a_lane_gives_its_lease_up_only_once_its_acknowledgements_are_stored() -> None:
    store = _RecordingStore()
    await store.open()
    dispatcher = Dispatcher(store)
    await store.append(event("d-1", REPO_A))
    connection = dispatcher.connect("ci", [REPO_A])
    while not isinstance(item := await asyncio.wait_for(connection.outbox.get(), 5), Outgoing):
        pass  # the assignment announcement comes first
    assert item.event.sequence == 1
    assert await dispatcher.settle(connection, REPO_A, 1)  # its cursor write now waits on the gate

    leaving = asyncio.create_task(dispatcher.disconnect(connection))
    await asyncio.sleep(0.05)
    assert store.log == [], "the lease went before the acknowledgement: the next holder would send #1 again"
    store.gate.set()
    await asyncio.wait_for(leaving, 5)
    assert store.log == [{("ci", REPO_A): 1}, "lease released"]
    assert await store.get_cursor("ci", REPO_A) == 1
    await store.aclose()


class _SwallowingStore(_RecordingStore):
    """A store whose read, cancelled in flight, returns as if nothing was there: the cancellation is lost (as
    a Redis read cancelled at the wrong moment was seen to do)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.reading = asyncio.Event()
        self.swallowed = 0

    async def read_streamable_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[Any]:
        self.reading.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.swallowed += 1
        return []


async def test_a_lane_whose_read_swallows_its_cancellation_still_stops_and_gives_its_lease_up() -> None:
    store = _SwallowingStore()
    await store.open()
    dispatcher = Dispatcher(store)
    connection = dispatcher.connect("ci", [REPO_A])
    await asyncio.wait_for(store.reading.wait(), 5)  # the lane reads, and will lose the cancellation

    await asyncio.wait_for(dispatcher.disconnect(connection), 10)
    assert store.swallowed == 1
    assert store.log == ["lease released"], "the next holder (on another replica) would wait for good"
    assert dispatcher.connection_count() == 0
