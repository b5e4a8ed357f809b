"""Real server processes on the machine's Redis: one accepts, deduplicates and streams; a second one on the
same Redis (another replica) sees and pushes what was posted to the first, and the other way round. One client
id on two replicas is served by one connection per repository; the drills run real clients against two replicas,
one of them killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from gitstafette._proto import gitstafette_pb2, gitstafette_pb2_grpc
from gitstafette.constants import HEADER_TARGET_ID
from tests.client.utils import (
    RecordingTarget,
    duplicates,
    first_occurrences,
    post_webhook,
    running_client,
    wait_until,
)
from tests.grpc_clients import AckStream
from tests.redis_utils import REPLICAS_TESTS_DB, SERVER_TESTS_DB, redis_store_url
from tests.utils import FIXTURES, ServerProcess, github_request, running_server

HELLO_WORLD_ID = "186853002"
OTHER_ID = "537845873"
#: every bounded wait of these tests; generous, as CI machines can be slow
DEADLINE_S = 20.0


@pytest.fixture
def store_url() -> Iterator[str]:
    with redis_store_url(SERVER_TESTS_DB) as url:
        yield url


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


@pytest.fixture
def shared_url() -> Iterator[str]:
    """A store URL for replicas serving one client id (their own database), leases of 2 s."""
    with redis_store_url(REPLICAS_TESTS_DB, "&lease_ttl=2s") as url:
        yield url


async def test_one_client_id_on_two_replicas_is_served_by_one_connection_the_other_takes_over_when_it_leaves(
    shared_url: str,
) -> None:
    posted = [github_request(FIXTURES / f"push.{n % 2}.json") for n in range(5)]
    with (
        running_server("--store", shared_url, "--repositories", HELLO_WORLD_ID) as first,
        running_server("--store", shared_url, "--repositories", HELLO_WORLD_ID) as second,
    ):
        async with httpx.AsyncClient(timeout=10) as http:

            async def post(number: int, server: ServerProcess) -> None:
                headers, body, _ = posted[number]
                answer = await http.post(f"{server.url}/v1/github/", headers=headers, content=body)
                assert answer.status_code == 201 and answer.json()["sequence"] == number + 1, answer.text

            on_first = AckStream(first.grpc_target, "ci", [HELLO_WORLD_ID])
            async with on_first:
                await post(0, first)
                relayed = await on_first.next_event()
                assert relayed is not None and relayed.sequence == 1
                assert on_first.assigned == [HELLO_WORLD_ID]

                # A connection of the same client id on the other replica stands by: it gets nothing.
                async with AckStream(second.grpc_target, "ci", [HELLO_WORLD_ID]) as on_second:
                    await on_first.ack(relayed)
                    for number, server in ((1, second), (2, first)):
                        await post(number, server)
                        relayed = await on_first.next_event()
                        assert relayed is not None and relayed.sequence == number + 1
                    await on_first.ack(relayed)  # #3 acknowledged, #2 not (acknowledged after #3: cursor stays 1)
                    assert await on_second.next_event(timeout=1) is None
                    assert on_second.assigned == []

                    # The first leaves: the second takes over at once from the last acknowledged event.
                    await on_first.close()
                    await post(3, second)
                    for sequence in (2, 3, 4):
                        relayed = await on_second.next_event(timeout=DEADLINE_S)
                        assert relayed is not None and relayed.sequence == sequence
                        assert relayed.webhook_event.event_id == posted[sequence - 1][0]["X-GitHub-Delivery"]
                        assert relayed.webhook_event.body == posted[sequence - 1][1]
                        await on_second.ack(relayed)
                    assert on_second.assigned == [HELLO_WORLD_ID]

                    # Back on the first replica, a new connection of the client id stands by in turn.
                    async with AckStream(first.grpc_target, "ci", [HELLO_WORLD_ID]) as again:
                        await post(4, first)
                        relayed = await on_second.next_event(timeout=DEADLINE_S)
                        assert relayed is not None and relayed.sequence == 5
                        assert await again.next_event(timeout=1) is None
    assert "stands by for repository 186853002" in second.log(), second.log()
    assert "Traceback" not in first.log() + second.log()


def delivered_in_order(target: RecordingTarget, posted: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per repository, the delivery ids the target got, first arrivals only (a redelivery after a takeover
    comes again, later), to compare with the order the webhooks were stored in."""
    return {
        repository: first_occurrences(
            [r.delivery_id for r in target.delivered() if r.header(HEADER_TARGET_ID) == repository]
        )
        for repository in posted
    }


def everything_arrived(target: RecordingTarget, posted: dict[str, list[str]]) -> bool:
    return set(target.delivered_ids()) >= {d for ids in posted.values() for d in ids}


def test_drill_posts_alternating_between_two_replicas_reach_every_client_id_in_order(shared_url: str) -> None:
    """Two servers on one Redis, webhooks posted to each in turn; client id "alpha" runs twice, connected to
    different replicas, "beta" once: each client id gets every event, in order per repository, none lost."""
    repositories = [HELLO_WORLD_ID, OTHER_ID]
    watch = ("--store", shared_url, "--repositories", ",".join(repositories))
    with (
        running_server(*watch) as first,
        running_server(*watch) as second,
        RecordingTarget() as alpha_target,
        RecordingTarget() as beta_target,
        running_client(first, repositories, alpha_target.url, "alpha") as alpha_on_first,
        running_client(second, repositories, alpha_target.url, "alpha") as alpha_on_second,
        running_client(second, repositories, beta_target.url, "beta") as beta,
        httpx.Client(timeout=10) as http,
    ):
        for client in (alpha_on_first, alpha_on_second, beta):
            client.wait_connected()
        posted: dict[str, list[str]] = {repository: [] for repository in repositories}
        for number in range(40):
            repository = repositories[number % 2]
            server = (first, second)[(number // 2) % 2]  # each repository gets posts on both replicas
            posted[repository].append(post_webhook(http, server, repository_id=repository))
        for target in (alpha_target, beta_target):
            wait_until(lambda target=target: everything_arrived(target, posted), message="every event delivered")

        # Each repository of alpha was served by one of its two connections at a time.
        served = [set(client.health()["repositories"]) for client in (alpha_on_first, alpha_on_second)]
        assert served[0] | served[1] == set(repositories) and not served[0] & served[1], served

    for target in (alpha_target, beta_target):
        assert delivered_in_order(target, posted) == posted
    # No takeover happened, so nothing came twice.
    assert duplicates(alpha_target.delivered_ids()) == {} and duplicates(beta_target.delivered_ids()) == {}
    assert "Traceback" not in first.log() + second.log()


def test_drill_kill_9_of_the_replica_a_client_streams_from_it_goes_on_with_the_other(shared_url: str) -> None:
    watch = ("--store", shared_url, "--repositories", HELLO_WORLD_ID)
    with (
        running_server(*watch) as first,
        running_server(*watch) as second,
        RecordingTarget() as target,
        httpx.Client(timeout=10) as http,
    ):
        target.delay_s = 0.02  # slower than the posts: the kill lands with events sent and not acknowledged
        servers = [first.grpc_target, second.grpc_target]
        with running_client(servers, [HELLO_WORLD_ID], target.url, "gamma") as client:
            assert client.wait_connected()["server"] == first.grpc_target
            posted = [post_webhook(http, (first, second)[n % 2], repository_id=HELLO_WORLD_ID) for n in range(30)]
            wait_until(lambda: len(target.delivered()) >= 3, message="the first deliveries")
            first.kill()  # SIGKILL: its lease in Redis is neither released nor renewed
            before_kill = len(target.delivered())
            posted += [post_webhook(http, second, repository_id=HELLO_WORLD_ID) for _ in range(10)]
            wait_until(lambda: set(target.delivered_ids()) >= set(posted), timeout=60, message="every event")
            assert client.health()["server"] == second.grpc_target

    delivered = target.delivered_ids()
    print(f"kill -9 after {before_kill} deliveries: {len(delivered)} deliveries of {len(posted)} events")
    assert first_occurrences(delivered) == posted
    # At least once: what was unacknowledged at the kill may come twice, not more.
    assert all(count == 2 for count in duplicates(delivered).values()), duplicates(delivered)
    assert "Traceback" not in second.log()


async def test_a_replay_asked_of_one_replica_is_sent_by_the_replica_serving_the_client_id(shared_url: str) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    with (
        running_server("--store", shared_url, "--repositories", HELLO_WORLD_ID) as first,
        running_server("--store", shared_url, "--repositories", HELLO_WORLD_ID) as second,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            async with AckStream(second.grpc_target, "ci", [HELLO_WORLD_ID]) as stream:
                posted = await http.post(f"{first.url}/v1/github/", headers=headers, content=body)
                assert posted.status_code == 201, posted.text
                relayed = await stream.next_event()
                assert relayed is not None and relayed.sequence == 1 and not relayed.replay
                await stream.fail(relayed, "the target said 404", 404)

                async def dead_letters() -> list[dict[str, object]]:
                    answer = await http.get(f"{first.url}/v1/dead-letters")
                    return list(answer.json()["dead_letters"])

                deadline = time.monotonic() + DEADLINE_S
                while not await dead_letters():
                    assert time.monotonic() < deadline, "the dead letter is not recorded"
                    await asyncio.sleep(0.05)

                # Asked of the first replica; the connection of "ci" is on the second: it sends the replay now.
                asked = await http.post(
                    f"{first.url}/v1/dead-letters/replay", json={"client_id": "ci", "repository_id": HELLO_WORLD_ID}
                )
                assert asked.status_code == 202 and asked.json()["replayed"] == [1], asked.text
                replayed = await stream.next_event(timeout=DEADLINE_S)
                assert replayed is not None and replayed.sequence == 1 and replayed.replay
                assert replayed.webhook_event.body == body
                await stream.ack(replayed)
                deadline = time.monotonic() + DEADLINE_S
                while await dead_letters():
                    assert time.monotonic() < deadline, "the delivered replay still shows as a dead letter"
                    await asyncio.sleep(0.05)


async def test_a_replica_stopped_with_sigterm_gives_its_leases_up_at_once() -> None:
    posted = [github_request(FIXTURES / f"push.{n % 2}.json") for n in range(2)]
    # Leases that would outlive the test: only giving them up lets the other replica take over.
    with redis_store_url(REPLICAS_TESTS_DB, "&lease_ttl=10m") as url:
        watch = ("--store", url, "--repositories", HELLO_WORLD_ID)
        with running_server(*watch) as first, running_server(*watch) as second:
            async with httpx.AsyncClient(timeout=10) as http:
                async with AckStream(first.grpc_target, "ci", [HELLO_WORLD_ID]) as on_first:
                    headers, body, _ = posted[0]
                    assert (await http.post(f"{second.url}/v1/github/", headers=headers, content=body)).is_success
                    relayed = await on_first.next_event(timeout=DEADLINE_S)
                    assert relayed is not None and relayed.sequence == 1  # the first replica holds the lease
                    await on_first.ack(relayed)
                    async with AckStream(second.grpc_target, "ci", [HELLO_WORLD_ID]) as on_second:
                        assert await on_second.next_event(timeout=1) is None

                        assert first.stop() == 0  # SIGTERM: streams end, leases are given up, the store closes
                        headers, body, _ = posted[1]
                        answer = await http.post(f"{second.url}/v1/github/", headers=headers, content=body)
                        assert answer.is_success
                        relayed = await on_second.next_event(timeout=DEADLINE_S)
                        assert relayed is not None and relayed.sequence == 2, first.log()
        assert "no longer served by" in first.log(), first.log()
