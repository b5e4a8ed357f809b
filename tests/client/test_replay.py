"""A dead letter, fixed at the target, is delivered again with ``gitstafette events replay``."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.client.utils import RecordingTarget, post_webhook, repository_of, running_client, wait_until
from tests.utils import ServerProcess


def _dead_letters(server: ServerProcess) -> list[dict[str, object]]:
    return httpx.get(f"{server.url}/v1/dead-letters").json()["dead_letters"]  # type: ignore[no-any-return]


def test_events_replay_delivers_a_dead_letter_once_the_target_is_fixed(
    server: ServerProcess, target: RecordingTarget
) -> None:
    repository = repository_of()
    with httpx.Client() as http:
        sent = [post_webhook(http, server) for _ in range(2)]
        target.answer = lambda request: 404 if request.delivery_id == sent[0] else 200
        with running_client(server, [repository], target.url, "replay-client"):
            wait_until(lambda: target.delivered_ids() == [sent[1]], message="the good event")
            letters = wait_until(lambda: _dead_letters(server), message="the dead letter")
            assert [(d["delivery_id"], d["status_code"]) for d in letters] == [(sent[0], 404)]

            target.answer = lambda request: 200  # the target is fixed
            replay = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gitstafette",
                    "events",
                    "replay",
                    "--server-url",
                    server.url,
                    "--repository",
                    repository,
                    "--client-id",
                    "replay-client",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert replay.returncode == 0, replay.stderr
            assert f"replaying #1 of {repository} to client replay-client" in replay.stdout

            wait_until(lambda: target.delivered_ids() == [sent[1], sent[0]], message="the replayed event")
            wait_until(lambda: not _dead_letters(server), message="the dead letter to go once delivered")
    body_of_replay = target.delivered()[-1]
    assert body_of_replay.delivery_id == sent[0]
    assert [r.delivery_id for r in target.posts()].count(sent[0]) == 2  # refused once, delivered once
