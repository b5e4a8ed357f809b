"""SIGTERM and SIGINT: in-flight work finishes, streams end cleanly, the store is closed, exit 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import httpx
import pytest

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from tests.grpc_clients import AckStream
from tests.utils import FIXTURES, github_request, running_server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_ends_streams_cleanly_and_keeps_events(tmp_path: Path, sig: signal.Signals) -> None:
    database = f"sqlite:///{tmp_path / 'events.db'}"
    headers, body, repository_id = github_request(FIXTURES / "push.0.json")
    with running_server("--store", database) as server:
        async with AckStream(server.grpc_target, "ci", [repository_id]) as stream:
            channel = grpc.aio.insecure_channel(server.grpc_target)
            legacy = pb_grpc.GitstafetteStub(channel).FetchWebhookEvents(
                pb.WebhookEventsRequest(client_id="old", repository_id=repository_id)
            )
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{server.url}/v1/github/", headers=headers, content=body)
            assert response.status_code == 201
            assert (await legacy.read()).webhook_events[0].event_id == headers["X-GitHub-Delivery"]
            assert await stream.next_event() is not None

            code = await asyncio.to_thread(server.stop, sig)
            # Both streams were ended by the server with status OK, not cut.
            last = await legacy.read()
            assert last is grpc.aio.EOF, (last, server.log())
            assert await legacy.code() == grpc.StatusCode.OK, (await legacy.details(), server.log())
            assert await stream.next_event(timeout=5) is None, server.log()
            await channel.close()
        assert code == 0, server.log()
        assert "gitstafette server stopped" in server.log()

    # The unacknowledged event is still there for the acknowledged client after a restart.
    with running_server("--store", database) as server:
        async with AckStream(server.grpc_target, "ci", [repository_id]) as stream:
            event = await stream.next_event()
            assert event is not None and event.webhook_event.event_id == headers["X-GitHub-Delivery"]
