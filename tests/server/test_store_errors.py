"""What the server makes of the store's two errors, on a real server: ``StoreUnavailable`` (may pass) is a 503
to the webhook's sender, which redelivers, and a stream waits; ``StoreError`` (will not pass by waiting) is a
500, a stream ended with INTERNAL, and an error in the log (a Sentry event), never a silent retry loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette.config import RedisSettings
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.model import WebhookEvent
from gitstafette.server.server import Server
from gitstafette.store.redis.keys import Keys
from tests.grpc_clients import OPTIONS, AckStream
from tests.in_process import in_process_server
from tests.redis_utils import SERVER_TESTS_DB, delete_prefix, redis_url, require_redis
from tests.utils import FIXTURES, github_request

REPO = "186853002"


async def _post(server: Server) -> httpx.Response:
    headers, body, repository_id = github_request(FIXTURES / "push.0.json")
    assert repository_id == REPO
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as http:
        return await http.post("/v1/github/", headers=headers, content=body)


def _failing(error: StoreError) -> Any:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fail


@pytest.mark.parametrize(
    ("error", "status", "level"),
    [
        (StoreUnavailable("induced: Redis is unreachable"), 503, logging.ERROR),
        (StoreError("induced: Redis refused the credentials"), 500, logging.ERROR),
    ],
)
async def test_a_webhook_the_store_cannot_take_is_503_if_that_may_pass_else_500(
    error: StoreError, status: int, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with in_process_server("memory://") as server:
        server.store.inner.append = _failing(error)  # type: ignore[method-assign]
        answer = await _post(server)
    assert answer.status_code == status
    assert ("redeliver later" in answer.text) is (status == 503)
    [record] = [r for r in caplog.records if r.name == "gitstafette.server.ingest" and "cannot store" in r.message]
    assert record.levelno == level
    # A fault comes with its traceback, for Sentry; an outage does not (the health check reports it once).
    assert (record.exc_info is not None) is (status == 500)


async def test_a_redis_key_of_the_wrong_type_is_500_not_503(tmp_path: Path) -> None:
    url = redis_url(SERVER_TESTS_DB)
    require_redis(url)
    delete_prefix(url)
    settings = RedisSettings.from_url(url)
    try:
        with redis.Redis(host=settings.host, port=settings.port, db=settings.database) as client:
            client.set(Keys(settings.prefix).events(REPO), "not a stream")  # WRONGTYPE for the append's script
        async with in_process_server(url) as server:
            answer = await _post(server)
            assert answer.status_code == 500, answer.text
            assert "store failed" in answer.text
    finally:
        delete_prefix(url)


async def test_a_store_error_at_setup_ends_the_stream_with_internal(tmp_path: Path) -> None:
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}") as server:
        server.store.inner.get_cursor = _failing(StoreError("induced: corrupt row"))  # type: ignore[method-assign]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=OPTIONS) as channel:
            call = pb_grpc.GitstafetteStub(channel).FetchWebhookEvents(
                pb.WebhookEventsRequest(client_id="old", repository_id=REPO)
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                async with asyncio.timeout(10):
                    await call.read()
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "store failed" in (error.value.details() or "")


def _event(delivery_id: str) -> WebhookEvent:
    return WebhookEvent(REPO, delivery_id, "push", b"{}", (("X-GitHub-Event", "push"),), 1, "Codertocat/Hello-World")


async def test_a_store_error_while_streaming_ends_the_original_stream_with_internal(tmp_path: Path) -> None:
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}", heartbeat_s=0.1) as server:
        await server.store.append(_event("d1"))
        server.store.inner.read_after = _failing(StoreError("induced: corrupt row"))  # type: ignore[method-assign]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=OPTIONS) as channel:
            call = pb_grpc.GitstafetteStub(channel).FetchWebhookEvents(
                pb.WebhookEventsRequest(client_id="old", repository_id=REPO, last_received_event_id=0)
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                async with asyncio.timeout(10):
                    async for response in call:
                        assert not response.webhook_events
    assert error.value.code() == grpc.StatusCode.INTERNAL


async def test_a_store_error_while_streaming_ends_the_acknowledged_stream_with_internal(tmp_path: Path) -> None:
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}", heartbeat_s=0.1) as server:
        await server.store.append(_event("d1"))
        failing = _failing(StoreError("induced: corrupt row"))
        server.store.inner.read_streamable_after = failing  # type: ignore[method-assign]
        async with AckStream(f"127.0.0.1:{server.grpc_port}", "ci", [REPO]) as stream:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stream.next_event(timeout=10)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert server.dispatcher.connection_count() == 0


async def test_an_unavailable_store_while_streaming_keeps_the_acknowledged_stream_waiting(tmp_path: Path) -> None:
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}", heartbeat_s=0.1) as server:
        await server.store.append(_event("d1"))
        backend = server.store.inner
        read = backend.read_streamable_after
        calls = 0

        async def away_at_first(*args: Any, **kwargs: Any) -> list[WebhookEvent]:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise StoreUnavailable("induced: disk I/O error")
            return await read(*args, **kwargs)

        backend.read_streamable_after = away_at_first  # type: ignore[method-assign]
        async with AckStream(f"127.0.0.1:{server.grpc_port}", "ci", [REPO]) as stream:
            got = await stream.next_event(timeout=10)
        assert calls > 2
        assert got is not None and got.webhook_event.event_id == "d1"
