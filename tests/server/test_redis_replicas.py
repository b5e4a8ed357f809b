"""Real server processes on the machine's Redis: one accepts, deduplicates and streams; a second one on the
same Redis (another replica) sees and pushes what was posted to the first, and the other way round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from gitstafette._proto import gitstafette_pb2, gitstafette_pb2_grpc
from tests.grpc_clients import AckStream
from tests.redis_utils import SERVER_TESTS_DB, delete_prefix, redis_url, require_redis
from tests.utils import FIXTURES, github_request, running_server

HELLO_WORLD_ID = "186853002"


@pytest.fixture
def store_url() -> Iterator[str]:
    url = redis_url(SERVER_TESTS_DB)
    require_redis(url)
    delete_prefix(url)
    yield url
    delete_prefix(url)


async def fetch_first(target: str, client_id: str, count: int) -> list[gitstafette_pb2.WebhookEvent]:
    """The first ``count`` events of the original ``FetchWebhookEvents`` stream."""
    received: list[gitstafette_pb2.WebhookEvent] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = gitstafette_pb2_grpc.GitstafetteStub(channel).FetchWebhookEvents(
            gitstafette_pb2.WebhookEventsRequest(client_id=client_id, repository_id=HELLO_WORLD_ID)
        )
        try:
            async for response in call:
                received.extend(response.webhook_events)
                if len(received) >= count:
                    break
        finally:
            call.cancel()
    return received


async def test_two_servers_on_one_redis_store_once_and_stream_each_others_events(store_url: str) -> None:
    first_headers, first_body, repository_id = github_request(FIXTURES / "push.0.json")
    second_headers, second_body, _ = github_request(FIXTURES / "push.1.json")
    assert repository_id == HELLO_WORLD_ID
    with (
        running_server("--store", store_url, "--repositories", HELLO_WORLD_ID) as first,
        running_server("--store", store_url, "--repositories", HELLO_WORLD_ID) as second,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            posted = await http.post(f"{first.url}/v1/github/", headers=first_headers, content=first_body)
            assert posted.status_code == 201, posted.text
            assert posted.json()["sequence"] == 1
            # The same delivery again, to either replica: stored once.
            for server in (first, second):
                again = await http.post(f"{server.url}/v1/github/", headers=first_headers, content=first_body)
                assert again.status_code == 204, again.text

            async with (
                AckStream(first.grpc_target, "ci-on-first", [HELLO_WORLD_ID]) as on_first,
                AckStream(second.grpc_target, "ci-on-second", [HELLO_WORLD_ID]) as on_second,
            ):
                for stream in (on_first, on_second):
                    relayed = await stream.next_event()
                    assert relayed is not None and relayed.sequence == 1
                    assert relayed.webhook_event.event_id == first_headers["X-GitHub-Delivery"]
                    assert relayed.webhook_event.body == first_body
                    await stream.ack(relayed)

                # Posted to the second replica, pushed at once by the first (and by the second).
                started = time.perf_counter()
                posted = await http.post(f"{second.url}/v1/github/", headers=second_headers, content=second_body)
                assert posted.status_code == 201 and posted.json()["sequence"] == 2, posted.text
                relayed = await on_first.next_event(timeout=5)
                crossed_s = time.perf_counter() - started
                assert relayed is not None and relayed.sequence == 2
                assert relayed.webhook_event.event_id == second_headers["X-GitHub-Delivery"]
                assert relayed.webhook_event.body == second_body
                # POST, store, notice, read and push: well under the 10-20 s of the original's timers.
                assert crossed_s < 1.0, crossed_s
                relayed = await on_second.next_event(timeout=5)
                assert relayed is not None and relayed.sequence == 2

        # The original contract on the second replica: both events, in order.
        events = await asyncio.wait_for(fetch_first(second.grpc_target, "legacy", 2), 10)
        assert [e.event_id for e in events] == [first_headers["X-GitHub-Delivery"], second_headers["X-GitHub-Delivery"]]
