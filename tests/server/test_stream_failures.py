"""A stream is either subscribed or ended with an error its client sees: never left open, heartbeats flowing,
with nothing serving it. And a burst of thousands of new streams is admitted, not shed by gRPC's core."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette.exceptions import StoreUnavailable
from gitstafette.model import WebhookEvent
from gitstafette.server.server import Server
from tests.grpc_clients import OPTIONS, AckStream
from tests.in_process import in_process_server

REPO = "186853002"


def _event(delivery_id: str) -> WebhookEvent:
    return WebhookEvent(REPO, delivery_id, "push", b"{}", (("X-GitHub-Event", "push"),), 1, "Codertocat/Hello-World")


async def _first_response(call: Any) -> Any:
    async with asyncio.timeout(10):
        return await call.read()


async def test_a_lane_that_fails_ends_its_stream_with_an_error(tmp_path: Path) -> None:
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}", heartbeat_s=0.1) as server:
        await server.store.append(_event("d1"))

        async def broken(*args: Any, **kwargs: Any) -> list[WebhookEvent]:
            raise ValueError("a row that cannot be decoded")  # not the store being away: a fault of the lane

        server.store.inner.read_streamable_after = broken  # type: ignore[method-assign]
        async with AckStream(f"127.0.0.1:{server.grpc_port}", "ci", [REPO]) as stream:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stream.next_event(timeout=10)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert f"cannot serve repository {REPO}" in (error.value.details() or "")
        assert server.dispatcher.connection_count() == 0


@pytest.mark.parametrize("kind", ["original", "acknowledged"])
async def test_a_store_that_does_not_answer_at_setup_refuses_the_stream_as_unavailable(
    tmp_path: Path, kind: str
) -> None:
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}") as server:
        calls = []

        async def away(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            raise StoreUnavailable("SQLite read failed: disk I/O error")

        # An owner/name is looked up in the store; the original stream also reads the client's cursor.
        server.store.inner.repositories = away  # type: ignore[method-assign]
        server.store.inner.get_cursor = away  # type: ignore[method-assign]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=OPTIONS) as channel:
            stub = pb_grpc.GitstafetteStub(channel)
            if kind == "original":
                call = stub.FetchWebhookEvents(pb.WebhookEventsRequest(client_id="old", repository_id=REPO))
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await _first_response(call)
            else:
                call = stub.StreamWebhookEvents()
                subscribe = pb.Subscribe(client_id="ci", repository_ids=["Codertocat/Hello-World"])
                await call.write(pb.StreamRequest(subscribe=subscribe))
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await _first_response(call)
        assert calls, "the store was never asked"
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "store does not answer" in (error.value.details() or "")


async def _open_original_streams(server: Server, count: int, channels: int) -> list[Any]:
    targets = [
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    calls = []
    for number in range(count):
        stub = pb_grpc.GitstafetteStub(targets[number % channels])
        calls.append(stub.FetchWebhookEvents(pb.WebhookEventsRequest(client_id=f"c{number}", repository_id=REPO)))
    return calls


async def test_a_burst_of_new_streams_beyond_grpcs_default_backlog_is_admitted(tmp_path: Path) -> None:
    """gRPC's core holds new RPCs until the server takes them up, and by default sheds them past 1,000 (some)
    and 3,000 (all) with CANCELLED. Opened in one burst, every one of 4,000 streams gets the event."""
    count = 4_000
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}") as server:
        calls = await _open_original_streams(server, count, channels=4)
        await asyncio.sleep(0)
        await server.store.append(_event("burst"))

        async def first_event(call: Any) -> str:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return f"ended: {await call.code()}"
                if response.webhook_events:
                    return str(response.webhook_events[0].event_id)

        try:
            async with asyncio.timeout(90):
                got = await asyncio.gather(*(first_event(call) for call in calls), return_exceptions=True)
        finally:
            for call in calls:
                call.cancel()
    failed = [repr(g) for g in got if g != "burst"]
    assert not failed, f"{len(failed)} of {count} streams did not get the event, e.g. {failed[:3]}"


def _read_first_events(port: int, count: int, opened: threading.Event, got: list[str]) -> None:
    """Open ``count`` original streams with grpc's blocking API (its own threads, not the server's loop), then
    read each one's first event into ``got`` (or what ended it)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GitstafetteStub(channel)
        calls = [
            stub.FetchWebhookEvents(pb.WebhookEventsRequest(client_id=f"c{n}", repository_id=REPO), timeout=120)
            for n in range(count)
        ]
        opened.set()
        for call in calls:
            try:
                got.append(next(r for r in call if r.webhook_events).webhook_events[0].event_id)
            except grpc.RpcError as exc:
                got.append(f"ended: {exc.code()}")
            finally:
                call.cancel()


async def test_new_streams_wait_out_a_server_busy_for_longer_than_grpcs_default_admission_time(tmp_path: Path) -> None:
    """gRPC's core cancels an RPC its server has not taken up within 30 s by default. A busy event loop (a burst
    of thousands of streams on a loaded machine takes that long to take up) must not cost the last of them their
    stream: here ten streams arrive while the server's loop is held for 31 s."""
    async with in_process_server(f"sqlite:///{tmp_path / 'events.db'}") as server:
        opened, got = threading.Event(), []
        reader = threading.Thread(target=_read_first_events, args=(server.grpc_port, 10, opened, got), daemon=True)
        reader.start()
        assert opened.wait(10)
        time.sleep(31)  # the server's loop is busy elsewhere: it blocks here on purpose, the streams wait in gRPC
        await server.store.append(_event("late"))
        await asyncio.to_thread(reader.join, 60)
    assert got == ["late"] * 10
