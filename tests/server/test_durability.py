"""Nothing answered 201 is lost: the SQLite store survives ``kill -9`` right after a burst of webhooks."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import httpx

from gitstafette._proto import gitstafette_pb2, gitstafette_pb2_grpc
from tests.utils import FIXTURES, ServerProcess, github_request, running_server

HELLO_WORLD_ID = "186853002"
#: Fixtures of repository 186853002 (Codertocat/Hello-World), posted in turn.
FIXTURE_NAMES = [
    "push.0.json",
    "push.1.json",
    "create.0.json",
    "pull_request.opened.0.json",
    "release.published.0.json",
]
BURST = 200


async def post_burst(url: str) -> dict[str, bytes]:
    """Post ``BURST`` webhooks at once; every one must be answered 201. Returns delivery id → body."""
    requests = [github_request(FIXTURES / FIXTURE_NAMES[i % len(FIXTURE_NAMES)]) for i in range(BURST)]
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as http:
        responses = await asyncio.gather(
            *(http.post("/v1/github/", headers=headers, content=body) for headers, body, _ in requests)
        )
    assert [r.status_code for r in responses] == [201] * BURST, [r.text for r in responses if r.status_code != 201]
    assert {r.json()["repository_id"] for r in responses} == {HELLO_WORLD_ID}
    assert sorted(r.json()["sequence"] for r in responses) == list(range(1, BURST + 1))
    return {headers["X-GitHub-Delivery"]: body for headers, body, _ in requests}


async def fetch_until(target: str, client_id: str, wanted: set[str]) -> dict[str, bytes]:
    """Stream ``FetchWebhookEvents`` until every wanted delivery arrived, then cancel the call."""
    received: dict[str, bytes] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gitstafette_pb2_grpc.GitstafetteStub(channel)
        call = stub.FetchWebhookEvents(
            gitstafette_pb2.WebhookEventsRequest(client_id=client_id, repository_id=HELLO_WORLD_ID)
        )
        try:
            async for response in call:
                for event in response.webhook_events:
                    assert event.event_id not in received, f"{event.event_id} streamed twice"
                    received[event.event_id] = event.body
                if wanted <= received.keys():
                    break
        finally:
            call.cancel()
    return received


async def test_every_201_survives_kill_9_and_is_streamed_after_restart(tmp_path: Path) -> None:
    args = ("--store", f"sqlite:///{tmp_path / 'events.db'}", "--repositories", HELLO_WORLD_ID)

    first = ServerProcess(*args).start()
    try:
        sent = await post_burst(first.url)
        # At once, with no chance to flush or shut down cleanly.
        first.stop(signal.SIGKILL)
    finally:
        first.kill()
    assert first.process is not None and first.process.returncode == -signal.SIGKILL

    with running_server(*args) as second:
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            listed = (await http.get(f"/v1/events/{HELLO_WORLD_ID}")).json()
        assert {e["delivery_id"] for e in listed["events"]} == set(sent)
        assert [e["sequence"] for e in listed["events"]] == list(range(1, BURST + 1))
        assert listed["last_sequence"] == BURST

        received = await asyncio.wait_for(fetch_until(second.grpc_target, "durability-test", set(sent)), 30)
        assert received == sent  # every delivery, each body byte for byte

        # Numbering goes on after the restart: no sequence is given twice.
        headers, body, _ = github_request(FIXTURES / "push.0.json")
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            response = await http.post("/v1/github/", headers=headers, content=body)
        assert response.status_code == 201
        assert response.json()["sequence"] == BURST + 1
