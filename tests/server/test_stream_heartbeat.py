"""The acknowledged stream's own loop, in process: heartbeats while idle, events as they come, an end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette.config import ServerConfig
from gitstafette.model import WebhookEvent
from gitstafette.server.dispatch import Dispatcher
from gitstafette.server.grpc_service import GitstafetteService
from gitstafette.server.parts import ServerParts
from gitstafette.store.memory import MemoryStore


async def _silent_client() -> AsyncIterator[pb.StreamRequest]:
    await asyncio.Event().wait()  # sends nothing more after its Subscribe, until the stream ends
    yield pb.StreamRequest()


async def test_heartbeats_while_idle_and_an_event_as_soon_as_it_is_there() -> None:
    store = MemoryStore()
    dispatcher = Dispatcher(store)
    audit = SimpleNamespace(record=lambda *args: None)
    auth = SimpleNamespace(required=False)
    parts = ServerParts(ServerConfig(heartbeat_s=0.05), store, None, None, dispatcher, auth, audit)  # type: ignore[arg-type]
    service = GitstafetteService(parts)
    connection = dispatcher.connect("ci", [])
    responses = service._serve_stream(_silent_client(), connection, [], batches=False)
    kinds = [(await anext(responses)).WhichOneof("kind") for _ in range(3)]
    assert kinds == ["subscribed", "heartbeat", "heartbeat"]

    waiting = asyncio.ensure_future(anext(responses))
    await asyncio.sleep(0.01)  # the stream waits for its next message, well before its next heartbeat
    event = WebhookEvent("186853002", "d1", "push", b"{}", (("X-GitHub-Event", "push"),), 1, sequence=1)
    connection.send(event, redelivery=0)
    response = await waiting
    assert response.WhichOneof("kind") == "event" and response.event.webhook_event.event_id == "d1"
    assert (await anext(responses)).WhichOneof("kind") == "heartbeat"

    connection.close()
    assert [response async for response in responses] == []
    assert dispatcher.connection_count() == 0
