"""One event fanned out to many client ids: every stream gets it with its own per-stream fields, and every
client id's acknowledgement is recorded (its cursor in the store, its audit trail)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from tests.grpc_clients import AckStream
from tests.utils import FIXTURES, ServerProcess, github_request

REPO = "186853002"
CLIENTS = 24


async def _until(predicate: Any, message: str, timeout: float = 20) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.02)
    return value


async def test_one_event_reaches_every_client_id_and_each_acknowledgement_is_recorded(server: ServerProcess) -> None:
    client_ids = [f"ci-{i}" for i in range(CLIENTS)]
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    headers["X-GitHub-Hook-Installation-Target-ID"] = REPO
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient() as http:
        streams = [await stack.enter_async_context(AckStream(server.grpc_target, c, [REPO])) for c in client_ids]
        # A second connection of ci-0, holding nothing: it takes the event over once the first one leaves.
        standby = await stack.enter_async_context(AckStream(server.grpc_target, "ci-0", [REPO]))
        posted = await http.post(f"{server.url}/v1/github/", headers=headers, content=body)
        assert posted.status_code == 201, posted.text

        events = [await stream.next_event() for stream in streams]
        for event in events:
            assert event is not None
            assert (event.repository_id, event.sequence, event.redelivery, event.replay) == (REPO, 1, 0, False)
            assert event.webhook_event.event_id == headers["X-GitHub-Delivery"]
            assert event.webhook_event.body == body
            assert event.webhook_event.headers == events[0].webhook_event.headers  # type: ignore[union-attr]
        assert {h.name: h.values for h in events[0].webhook_event.headers}["X-GitHub-Event"] == "push"  # type: ignore[union-attr]

        # ci-0 leaves without acknowledging: its other connection gets the same event as a redelivery.
        await streams[0].close()
        again = await standby.next_event()
        assert again is not None and again.redelivery == 1 and again.webhook_event == events[1].webhook_event  # type: ignore[union-attr]
        await standby.ack(again)
        for stream, event in zip(streams[1:], events[1:], strict=True):
            assert event is not None
            await stream.ack(event)

        async def listing() -> dict[str, Any] | None:
            found = (await http.get(f"{server.url}/v1/events/{REPO}")).json()["events"][0]
            acknowledged = [c for c, state in found["clients"].items() if state["state"] == "acknowledged"]
            done = (
                len(acknowledged) == CLIENTS and sum(a["action"] == "acknowledged" for a in found["audit"]) == CLIENTS
            )
            return found if done else None

        # The cursors come from the store: every client id's acknowledgement was written there.
        event = await _until(listing, "every client id's acknowledgement in the store and the audit trail")
    trail: dict[str, list[str]] = {}
    for record in event["audit"]:
        trail.setdefault(record["client_id"], []).append(record["action"])
    assert trail == {
        c: ["sent", "sent", "acknowledged"] if c == "ci-0" else ["sent", "acknowledged"] for c in client_ids
    }
