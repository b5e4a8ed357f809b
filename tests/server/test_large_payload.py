"""Payloads near GitHub's 25 MB cap go in over HTTP and out over gRPC whole."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import httpx
import pytest

from gitstafette._proto import gitstafette_pb2, gitstafette_pb2_grpc
from tests.utils import FIXTURES, ServerProcess, github_request, running_server

HELLO_WORLD_ID = "186853002"
PAYLOAD_BYTES = 20 * 1000 * 1000
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def large_push(tag: str) -> tuple[dict[str, str], bytes]:
    """push.0.json grown to about 20 MB by a long string, with non-ASCII text so bytes matter."""
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    payload = json.loads(body)
    filler = f"{tag} estafette – ünïcødé ✓ "
    payload["head_commit"]["message"] = filler * (PAYLOAD_BYTES // len(filler.encode()) + 1)
    large = json.dumps(payload, ensure_ascii=False, indent=1).encode()
    assert PAYLOAD_BYTES < len(large) < 21 * 1000 * 1000
    return headers, large


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("large") / "events.db"
    with running_server("--store", f"sqlite:///{store}", "--repositories", HELLO_WORLD_ID) as process:
        yield process


async def post(server: ServerProcess, headers: dict[str, str], body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        return await http.post("/v1/github/", headers=headers, content=body)


async def fetch(server: ServerProcess, client_id: str, wanted: set[str]) -> dict[str, gitstafette_pb2.WebhookEvent]:
    """Events streamed to a new client id, by delivery id, until the wanted ones arrived; then cancel."""
    events: dict[str, gitstafette_pb2.WebhookEvent] = {}
    async with grpc.aio.insecure_channel(server.grpc_target, options=CHANNEL_OPTIONS) as channel:
        call = gitstafette_pb2_grpc.GitstafetteStub(channel).FetchWebhookEvents(
            gitstafette_pb2.WebhookEventsRequest(client_id=client_id, repository_id=HELLO_WORLD_ID)
        )
        try:
            async for response in call:
                events.update((e.event_id, e) for e in response.webhook_events)
                if wanted <= events.keys():
                    break
        finally:
            call.cancel()
    return events


async def test_20_mb_payload_is_accepted_and_streamed_byte_for_byte(server: ServerProcess) -> None:
    headers, body = large_push("one")
    response = await post(server, headers, body)
    assert response.status_code == 201, response.text

    delivery_id = headers["X-GitHub-Delivery"]
    event = (await asyncio.wait_for(fetch(server, "large-one", {delivery_id}), 60))[delivery_id]
    assert len(event.body) == len(body)
    assert event.body == body
    relayed = {h.name: h.values for h in event.headers}
    assert relayed["X-GitHub-Delivery"] == headers["X-GitHub-Delivery"]
    assert relayed["Content-Type"] == "application/json"


async def test_several_20_mb_payloads_in_a_row_are_each_streamed_whole(server: ServerProcess) -> None:
    """Two bodies of 20 MB do not fit in one gRPC message: they must still both arrive."""
    sent = [large_push("two"), large_push("three")]
    for headers, body in sent:
        response = await post(server, headers, body)
        assert response.status_code == 201, response.text

    wanted = {headers["X-GitHub-Delivery"] for headers, _ in sent}
    received = await asyncio.wait_for(fetch(server, "large-many", wanted), 60)
    for headers, body in sent:
        assert received[headers["X-GitHub-Delivery"]].body == body
