"""SIGTERM and SIGINT: in-flight work finishes, streams end cleanly, the store is closed, exit 0; a step
that does not finish within the grace is named in the log and the process exits anyway, with code 1."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette.server.server import SHUTDOWN_MARGIN_S
from tests.grpc_clients import AckStream
from tests.utils import FIXTURES, github_request, running_server

HANGING_STORE_SERVER = Path(__file__).with_name("hanging_store_server.py")


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


@pytest.mark.parametrize("hang", ["cancellable", "ignores-cancellation", "blocked-thread"])
def test_a_store_that_never_closes_still_lets_the_process_exit_within_the_grace(hang: str) -> None:
    grace_s = 2.0
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    with running_server(
        "--store",
        "memory://",
        "--shutdown-grace",
        f"{grace_s:g}s",
        program=[sys.executable, str(HANGING_STORE_SERVER)],
        env={"HANGING_STORE": hang},
    ) as server:
        assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body, timeout=10).status_code == 201
        sent = time.monotonic()
        # Generous: the bound is the grace plus the margin; a loaded machine adds seconds, not a hang.
        code = server.stop(signal.SIGTERM, timeout=grace_s + SHUTDOWN_MARGIN_S + 20)
        took = time.monotonic() - sent
        log = server.log()
    assert code == 1, log
    assert "store close did not finish within the grace" in log, log
    assert "pending writes may be lost" in log, log
    assert "gitstafette server stopped, unfinished: store close" in log, log
    # Only the store's close ran out of time: the steps before it finished.
    assert log.count("did not finish within the grace") == 1, log
    assert took < grace_s + SHUTDOWN_MARGIN_S + 20, log
