"""A real server on a test-owned Redis that goes away and comes back: ingest says 503 meanwhile, readiness and
gRPC health say NOT_SERVING, open streams stay open, and everything recovers without a restart; with
``appendonly yes`` nothing that got a 201 is lost, even when Redis is killed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitstafette import constants
from gitstafette._proto import gitstafette_pb2, gitstafette_pb2_grpc
from tests.grpc_clients import AckStream
from tests.redis_utils import RedisServer, unique_prefix
from tests.utils import FIXTURES, ServerProcess, github_request, running_server

HELLO_WORLD_ID = "186853002"
#: every bounded wait of these tests; generous, as CI machines can be slow
DEADLINE_S = 20.0


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own that keeps every write on disk before it answers."""
    server = RedisServer(tmp_path, appendonly=True, extra_args=["--appendfsync", "always"]).start()
    try:
        yield server
    finally:
        server.stop()


def webhook(number: int) -> tuple[dict[str, str], bytes]:
    headers, body, repository_id = github_request(FIXTURES / f"push.{number % 2}.json")
    assert repository_id == HELLO_WORLD_ID
    return headers, body


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``check`` until it is true, failing the test after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {deadline_s:g}s: {what}")
        await asyncio.sleep(0.1)


async def health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="gitstafette.v1.Gitstafette"), timeout=5
        )
    return int(answer.status)


@contextlib.asynccontextmanager
async def legacy_stream(
    target: str, client_id: str, after: int = 0
) -> AsyncIterator[asyncio.Queue[gitstafette_pb2.WebhookEvent | BaseException | None]]:
    """``FetchWebhookEvents`` read by a task: its events in a queue, then None at its end or its error."""
    received: asyncio.Queue[gitstafette_pb2.WebhookEvent | BaseException | None] = asyncio.Queue()
    async with grpc.aio.insecure_channel(target) as channel:
        call = gitstafette_pb2_grpc.GitstafetteStub(channel).FetchWebhookEvents(
            gitstafette_pb2.WebhookEventsRequest(
                client_id=client_id, repository_id=HELLO_WORLD_ID, last_received_event_id=after
            )
        )

        async def read() -> None:
            try:
                async for response in call:
                    for event in response.webhook_events:
                        received.put_nowait(event)
                received.put_nowait(None)
            except grpc.aio.AioRpcError as exc:
                received.put_nowait(exc)

        reader = asyncio.create_task(read())
        try:
            yield received
        finally:
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def next_legacy(queue: asyncio.Queue[gitstafette_pb2.WebhookEvent | BaseException | None]) -> str:
    item = await asyncio.wait_for(queue.get(), DEADLINE_S)
    if isinstance(item, BaseException):
        raise item
    assert item is not None, "FetchWebhookEvents ended"
    return item.event_id


async def post(
    http: httpx.AsyncClient, server: ServerProcess, headers: dict[str, str], body: bytes, timeout_s: float = 10
) -> int:
    # The client's own timeout bounds the wait: a POST that hangs fails the test.
    answer = await http.post(f"{server.url}/v1/github/", headers=headers, content=body, timeout=timeout_s)
    return answer.status_code


def cursor_of(redis_server: RedisServer, prefix: str, client_id: str) -> int | None:
    key = f"{prefix}:" + constants.REDIS_CURSORS_KEY.format(repository_id=HELLO_WORLD_ID)
    with redis.Redis(port=redis_server.port, socket_timeout=5) as client:
        value = client.hget(key, client_id)
    return None if value is None else int(value)


async def test_redis_stopped_is_503_and_not_serving_and_all_recovers_with_streams_open(
    durable_redis: RedisServer,
) -> None:
    prefix = unique_prefix()
    store_url = f"{durable_redis.url}/0?prefix={prefix}"
    first, second, third = webhook(0), webhook(1), webhook(2)
    with running_server("--store", store_url, "--repositories", HELLO_WORLD_ID) as server:
        async with httpx.AsyncClient() as http:
            assert await post(http, server, *first) == 201
            assert await post(http, server, *second) == 201
            async with (
                AckStream(server.grpc_target, "ci", [HELLO_WORLD_ID]) as stream,
                legacy_stream(server.grpc_target, "legacy") as legacy,
            ):
                one = await stream.next_event()
                assert one is not None and one.sequence == 1
                await stream.ack(one)
                two = await stream.next_event()
                assert two is not None and two.sequence == 2  # left unacknowledged
                assert await next_legacy(legacy) == first[0]["X-GitHub-Delivery"]
                assert await next_legacy(legacy) == second[0]["X-GitHub-Delivery"]

                async def acknowledged() -> bool:
                    return cursor_of(durable_redis, prefix, "ci") == 1

                await until(acknowledged, "the acknowledgement of #1 is stored")

                durable_redis.stop()
                assert await post(http, server, *third) == 503

                async def not_ready() -> bool:
                    return (await http.get(f"{server.url}/readyz", timeout=10)).status_code == 503

                async def not_serving() -> bool:
                    return await health(server.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING

                await until(not_ready, "/readyz says 503")
                await until(not_serving, "gRPC health says NOT_SERVING")

                # Streams opened now find the store away at once: they wait for it rather than fail.
                async with (
                    AckStream(server.grpc_target, "late", [HELLO_WORLD_ID]) as late,
                    legacy_stream(server.grpc_target, "late-legacy", after=2) as late_legacy,
                ):
                    await asyncio.sleep(1)  # let both try the store, and retry, while it is away

                    durable_redis.start()  # same port, same folder: its append-only file

                    async def stored() -> bool:
                        return await post(http, server, *third) == 201

                    await until(stored, "a POST is stored again")

                    async def serving() -> bool:
                        return await health(server.grpc_target) == health_pb2.HealthCheckResponse.SERVING

                    await until(serving, "gRPC health says SERVING again")
                    assert (await http.get(f"{server.url}/readyz", timeout=10)).status_code == 200

                    # The streams open through the outage get the new event, and the late ones everything.
                    three = await stream.next_event(timeout=DEADLINE_S)
                    assert three is not None and three.sequence == 3
                    assert three.webhook_event.event_id == third[0]["X-GitHub-Delivery"]
                    assert await next_legacy(legacy) == third[0]["X-GitHub-Delivery"]
                    for expected, (headers, _body) in enumerate((first, second, third), start=1):
                        relayed = await late.next_event(timeout=DEADLINE_S)
                        assert relayed is not None and relayed.sequence == expected
                        assert relayed.webhook_event.event_id == headers["X-GitHub-Delivery"]
                    assert await next_legacy(late_legacy) == third[0]["X-GitHub-Delivery"]

            # The unacknowledged #2 is not lost: the next connection of the client id gets it, then #3.
            async with AckStream(server.grpc_target, "ci", [HELLO_WORLD_ID]) as again:
                for expected, (headers, _body) in ((2, second), (3, third)):
                    relayed = await again.next_event(timeout=DEADLINE_S)
                    assert relayed is not None and relayed.sequence == expected
                    assert relayed.webhook_event.event_id == headers["X-GitHub-Delivery"]
                    await again.ack(relayed)
        assert server.alive()
    assert "Traceback" not in server.log(), server.log()


async def test_every_webhook_that_got_201_survives_redis_being_killed(durable_redis: RedisServer) -> None:
    store_url = f"{durable_redis.url}/0?prefix={unique_prefix()}"
    posted = [webhook(n) for n in range(30)]
    with running_server("--store", store_url, "--repositories", HELLO_WORLD_ID) as server:
        async with httpx.AsyncClient() as http:
            statuses = await asyncio.gather(*(post(http, server, headers, body) for headers, body in posted))
            assert statuses == [201] * len(posted)

            # No shutdown of its own: with appendfsync always, what was answered is on disk.
            assert durable_redis.process is not None
            durable_redis.process.kill()
            durable_redis.process.wait(10)
            durable_redis.start()

            after = webhook(30)

            async def stored() -> bool:
                return await post(http, server, *after) == 201

            await until(stored, "a POST is stored after the restart")

        ids = {headers["X-GitHub-Delivery"] for headers, _ in posted}
        async with AckStream(server.grpc_target, "after-restart", [HELLO_WORLD_ID]) as stream:
            streamed = []
            for sequence in range(1, len(posted) + 2):
                relayed = await stream.next_event(timeout=DEADLINE_S)
                assert relayed is not None and relayed.sequence == sequence
                streamed.append(relayed.webhook_event.event_id)
                await stream.ack(relayed)
        assert set(streamed[:-1]) == ids and len(streamed[:-1]) == len(ids)
        assert streamed[-1] == after[0]["X-GitHub-Delivery"]


async def test_a_hanging_redis_is_503_within_the_ingest_timeout_and_201_once_it_answers_again(
    durable_redis: RedisServer,
) -> None:
    store_url = f"{durable_redis.url}/0?prefix={unique_prefix()}"
    before, hung, after = webhook(0), webhook(1), webhook(2)
    assert durable_redis.process is not None
    with running_server("--store", store_url, "--repositories", HELLO_WORLD_ID) as server:
        async with httpx.AsyncClient() as http:
            assert await post(http, server, *before) == 201
            durable_redis.process.send_signal(signal.SIGSTOP)  # alive, connections accepted, nothing answered
            try:
                # Four times the ingest timeout; Redis's socket timeout for reads (10 s), let alone with a retry
                # (20 s), would fail here.
                hang_bound_s = 4 * constants.REDIS_INGEST_TIMEOUT_S
                assert hang_bound_s < constants.REDIS_SOCKET_TIMEOUT_S
                assert await post(http, server, *hung, timeout_s=hang_bound_s) == 503
                assert (await http.get(f"{server.url}/readyz", timeout=10)).status_code == 503
            finally:
                durable_redis.process.send_signal(signal.SIGCONT)

            async def stored() -> bool:
                return await post(http, server, *after) == 201

            await until(stored, "a POST is stored once Redis answers again")
            # GitHub delivers the one that got 503 again: stored once, whether or not Redis ran the first try.
            assert await post(http, server, *hung) in (201, 204)

        async with AckStream(server.grpc_target, "after-hang", [HELLO_WORLD_ID]) as stream:
            streamed = []
            for _ in range(3):
                relayed = await stream.next_event(timeout=DEADLINE_S)
                assert relayed is not None
                streamed.append(relayed.webhook_event.event_id)
            assert await stream.next_event(timeout=1) is None
        assert sorted(streamed) == sorted(headers["X-GitHub-Delivery"] for headers, _ in (before, hung, after))
        assert streamed[0] == before[0]["X-GitHub-Delivery"]
    assert "Traceback" not in server.log(), server.log()
