"""Sentry: the real server and client report to a loopback stand-in that decodes the real envelopes."""

from __future__ import annotations

import gzip
import json
import sys
from typing import Any

import httpx

from tests.client.utils import RecordingTarget, post_webhook, repository_of, running_client, wait_until
from tests.observability import failing_store_server
from tests.security.utils import new_secret, post_signed
from tests.utils import running_server

SENTRY_PROJECT = "42"
FAILING_STORE_SERVER = [sys.executable, failing_store_server.__file__]


def sentry_dsn(collector: RecordingTarget) -> str:
    return f"http://public-key@127.0.0.1:{collector.port}/{SENTRY_PROJECT}"


def envelopes(collector: RecordingTarget) -> list[tuple[bytes, list[tuple[dict[str, Any], dict[str, Any]]]]]:
    """Each envelope posted, as (its raw bytes, decompressed, and its (item header, item) pairs)."""
    found = []
    for post in collector.posts():
        assert post.path == f"/api/{SENTRY_PROJECT}/envelope/", post.path
        raw = gzip.decompress(post.body) if post.header("Content-Encoding") == "gzip" else post.body
        lines = raw.split(b"\n")
        json.loads(lines[0])  # the envelope header
        items = [(json.loads(lines[i]), json.loads(lines[i + 1])) for i in range(1, len(lines) - 1, 2) if lines[i]]
        found.append((raw, items))
    return found


def test_a_webhook_with_a_wrong_signature_is_one_sentry_event_without_secret_or_body() -> None:
    secret = new_secret("webhook")
    with RecordingTarget() as collector:
        env = {"GITSTAFETTE_WEBHOOK_SECRET": secret, "SENTRY_DSN": sentry_dsn(collector)}
        with running_server("--store", "memory://", env=env) as server:
            forged = new_secret("forged")
            response, delivery_id = post_signed(server, forged)
            assert response.status_code == 401
            assert post_signed(server, secret)[0].status_code == 201  # a good one reports nothing
            wait_until(lambda: len(collector.posts()) >= 1, message="the Sentry envelope")

    sent = envelopes(collector)
    assert len(sent) == 1, sent
    raw, items = sent[0]
    assert [header["type"] for header, _ in items] == ["event"]
    event = items[0][1]
    assert event["level"] == "warning"
    assert event["message"].startswith("webhook signature check failed: X-Hub-Signature-256 does not match")
    assert event["tags"]["kind"] == "signature-failure"
    assert event["tags"]["delivery_id"] == delivery_id
    assert event["tags"]["service"] == "gitstafette-server"
    assert event["tags"]["status"] == "401"
    assert event["release"].startswith("gitstafette@")
    assert secret.encode() not in raw and forged.encode() not in raw
    assert b"sha256=" not in raw  # no signature header either
    assert b"Codertocat" not in raw and b'"ref"' not in raw  # nothing of the payload


def test_a_dead_letter_is_one_sentry_event_from_the_client_without_token_or_body(
    target: RecordingTarget, tmp_path: Any
) -> None:
    token = new_secret("token")
    repository = repository_of()
    target.answer = lambda request: 422
    with RecordingTarget() as collector:
        with (
            running_server("--store", f"sqlite:///{tmp_path / 'events.db'}", env={"OAUTH_TOKEN": token}) as server,
            running_client(
                server,
                [repository],
                target.url,
                "sentried",
                env={"GITSTAFETTE_TOKEN": token, "SENTRY_DSN": sentry_dsn(collector)},
            ) as client,
            httpx.Client() as http,
        ):
            client.wait_connected()
            delivery_id = post_webhook(http, server)
            wait_until(lambda: len(collector.posts()) >= 1, message="the Sentry envelope")
            # the client's shutdown flushes whatever else it would have sent

    sent = envelopes(collector)
    assert len(sent) == 1, sent
    raw, items = sent[0]
    event = items[0][1]
    assert event["tags"]["kind"] == "dead-letter"
    assert event["tags"]["delivery_id"] == delivery_id
    assert event["tags"]["repository"] == repository
    assert event["tags"]["status"] == "422"
    assert event["tags"]["service"] == "gitstafette-client"
    assert event["tags"]["sequence"] == "1"
    assert token.encode() not in raw
    assert b"Codertocat" not in raw and b'"ref"' not in raw
    assert b"sys.argv" not in raw


def test_an_unexpected_exception_is_one_sentry_event_with_its_stack_and_no_body() -> None:
    with RecordingTarget() as collector:
        env = {"SENTRY_DSN": sentry_dsn(collector)}
        with running_server("--store", "memory://", env=env, program=FAILING_STORE_SERVER) as server:
            response, _ = post_signed(server, None)
            assert response.status_code == 500
            wait_until(lambda: len(collector.posts()) >= 1, message="the Sentry envelope")

    sent = envelopes(collector)
    assert len(sent) == 1, sent
    raw, items = sent[0]
    event = items[0][1]
    assert event["level"] == "error"
    assert event["tags"]["service"] == "gitstafette-server"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == failing_store_server.INDUCED
    frames = exception["stacktrace"]["frames"]
    assert any(frame["function"] == "store_event" for frame in frames)
    assert all("vars" not in frame for frame in frames)  # no local variables: they may hold a body or a secret
    assert b"Codertocat" not in raw and b'"ref"' not in raw
