"""``gitstafette events list|replay`` against a real server."""

from __future__ import annotations

from typer.testing import CliRunner

from gitstafette.cli.events import events_app
from tests.grpc_clients import AckStream
from tests.server.test_ack_stream import _until_pending, post
from tests.utils import ServerProcess

runner = CliRunner()


async def test_list_and_replay_dead_letters(server: ServerProcess) -> None:
    ids = await post(server, count=2)
    async with AckStream(server.grpc_target, "jenkins", ["186853002"]) as stream:
        first, second = await stream.next_event(), await stream.next_event()
        assert first is not None and second is not None
        await stream.fail(first, "target answered 410", 410)
        await stream.ack(second)
        await _until_pending(server, "jenkins", 0)

        listed = runner.invoke(events_app, ["list", "--server-url", server.url, "--repository", "186853002"])
        assert listed.exit_code == 0, listed.output
        assert "#1" in listed.output and ids[0] in listed.output and "jenkins: dead-letter" in listed.output
        assert "jenkins: acknowledged" in listed.output

        letters = runner.invoke(events_app, ["list", "--server-url", server.url, "--dead-letters"])
        assert letters.exit_code == 0
        assert "186853002#1" in letters.output and "status 410" in letters.output and ids[1] not in letters.output

        replayed = runner.invoke(
            events_app,
            ["replay", "--server-url", server.url, "--repository", "186853002", "--client-id", "jenkins"],
        )
        assert replayed.exit_code == 0, replayed.output
        assert "replaying #1 of 186853002 to client jenkins" in replayed.output
        again = await stream.next_event()
        assert again is not None and again.replay and again.webhook_event.event_id == ids[0]


def test_errors_are_clear(server: ServerProcess) -> None:
    missing = runner.invoke(
        events_app, ["replay", "--server-url", server.url, "--repository", "77", "--client-id", "x"]
    )
    assert missing.exit_code == 1
    assert "404" in missing.output and "no events stored for repository 77" in missing.output
    down = runner.invoke(events_app, ["list", "--server-url", "http://127.0.0.1:9", "--dead-letters"])
    assert down.exit_code == 1 and "cannot reach" in down.output
