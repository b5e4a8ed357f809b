"""What a client that the server turns away is told, and shows: a refused token is an error with what to
do, retried at a slow pace and visible on /ready; a server that speaks no TLS is named as such."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gitstafette.config import ClientConfig
from tests.client.utils import ClientProcess, RecordingTarget, running_client, wait_until
from tests.security.utils import OTHER, REPO, Token, make_token, write_tokens
from tests.utils import running, running_server


def _ready(client: ClientProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{client.url}/ready", timeout=5)
    return response.status_code, response.json()


def _log_lines(client: ClientProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.lines if line.startswith("{")]


def _not_ready_because(client: ClientProcess, state: str, *words: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status, body = _ready(client)
        reason = body["reason"] or ""
        return body if status == 503 and body["state"] == state and all(w in reason for w in words) else None

    body: dict[str, Any] = wait_until(check, message=f"/ready to say {state}: {words}")
    return body


@pytest.mark.parametrize(
    ("token", "refusal"),
    [
        ("not-a-known-token", "UNAUTHENTICATED: unknown token"),
        # The server's own message names the client's option too.
        (None, "UNAUTHENTICATED: no token: send metadata 'authorization: Bearer <token>' (gitstafette client --token"),
    ],
)
def test_a_refused_token_is_an_error_that_says_what_to_do_shown_on_ready_and_still_retried(
    tmp_path: Path, token: str | None, refusal: str
) -> None:
    known = make_token("jenkins", REPO)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", known)
    args = ["--refused-retry-delay", "0.5s"] + (["--token", token] if token else [])
    with (
        running_server("--store", "memory://", "--tokens-file", str(tokens_file)) as server,
        RecordingTarget() as target,
        running_client(server, [REPO], target.url, "jenkins", *args) as client,
    ):
        body = _not_ready_because(client, "refused", refusal, "GITSTAFETTE_TOKEN")
        assert body["connected"] is False
        refused = [line for line in _log_lines(client) if line["event"].startswith("refused by")]
        assert refused, client.log()
        assert all(line["level"] == "error" for line in refused)
        assert "gitstafette client --token or GITSTAFETTE_TOKEN" in refused[0]["event"]
        assert "trying again every 0.5s" in refused[0]["event"]
        # Not the warning of a network blip, retried with the backoff of one.
        assert not [line for line in _log_lines(client) if line["event"].startswith("reconnecting")], client.log()
        # It keeps asking: once the server knows the token (SIGHUP re-reads the file), it connects.
        if token is None:
            return  # without a token the client never gets in; the refusal above is the point
        write_tokens(tokens_file, known, Token(token, "jenkins", (REPO,)))
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        client.wait_connected()
        status, body = _ready(client)
        assert (status, body["reason"]) == (200, None)


def test_a_token_that_may_not_read_the_repositories_is_permission_denied_and_says_so(tmp_path: Path) -> None:
    other_only = make_token("tekton", OTHER)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", other_only)
    with (
        running_server("--store", "memory://", "--tokens-file", str(tokens_file)) as server,
        RecordingTarget() as target,
        running_client(server, [REPO], target.url, "tekton", "--token", other_only.value) as client,
    ):
        body = _not_ready_because(client, "refused", "PERMISSION_DENIED", "--repositories", "GITSTAFETTE_TOKEN")
        assert other_only.value not in json.dumps(body)


def test_the_slow_pace_of_retrying_a_refusal_is_a_minute_by_default() -> None:
    config = ClientConfig(repositories=("1",), target="http://127.0.0.1:8080/x")
    assert config.refused_retry_delay_s == 60 > config.reconnect_max_delay_s


def test_a_client_without_insecure_against_a_plaintext_server_is_told_the_server_does_not_speak_tls() -> None:
    with running_server("--store", "memory://") as server, RecordingTarget() as target:
        client = ClientProcess([server.grpc_target], [REPO], target.url, "tls-client")
        client.command.remove("--insecure")
        with running(client):
            hint = "the server does not speak TLS: use --insecure or give the server a certificate"
            body = _not_ready_because(client, "reconnecting", hint)
            assert body["reason"].startswith("UNAVAILABLE: ")
            assert any(hint in line["event"] for line in _log_lines(client) if line["level"] == "warning")
