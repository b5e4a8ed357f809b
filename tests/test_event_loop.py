"""--event-loop: the server and the client run on uvloop by default, on asyncio's loop when asked, and relay
the same on both; a wrong value is refused by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvloop

from gitstafette._runtime import event_loop_factory
from gitstafette.exceptions import ConfigError
from tests.client.utils import RecordingTarget, post_webhook, repository_of, running_client, wait_until
from tests.utils import running_server


def test_auto_and_uvloop_pick_uvloop_and_asyncio_picks_the_standard_loop() -> None:
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("UVLoop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_an_unknown_loop_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="'trio' is not one of auto, uvloop, asyncio"):
        event_loop_factory("trio")


@pytest.mark.parametrize("command", ["server", "client"])
def test_the_command_refuses_an_unknown_loop_before_it_starts(command: str) -> None:
    argv = [sys.executable, "-m", "gitstafette", command, "--event-loop", "libev"]
    if command == "client":
        argv += ["--insecure", "--repositories", "1", "--target", "http://127.0.0.1:9/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--event-loop: 'libev' is not one of auto, uvloop, asyncio" in done.stderr
    assert "listening" not in done.stderr


@pytest.mark.parametrize(("server_loop", "client_loop"), [("auto", "asyncio"), ("asyncio", "auto")])
def test_relay_on_either_loop(tmp_path: Path, target: RecordingTarget, server_loop: str, client_loop: str) -> None:
    expected = {"auto": "uvloop", "asyncio": "asyncio"}
    store = f"sqlite:///{tmp_path / 'events.db'}"
    with running_server("--store", store, "--event-loop", server_loop) as server:
        assert f"loop={expected[server_loop]}" in server.log()
        with (
            running_client(server, [repository_of()], target.url, "loops", "--event-loop", client_loop) as client,
            httpx.Client() as http,
        ):
            assert f"loop={expected[client_loop]}" in client.log()
            client.wait_connected()
            sent = [post_webhook(http, server) for _ in range(5)]
            wait_until(lambda: len(target.delivered()) >= len(sent), message="five webhooks at the target")
    assert target.delivered_ids() == sent
