"""Webhook secrets: a webhook without GitHub's valid signature is refused (401) and not stored, over HTTP
and over ``WebhookEventPush``."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from tests.security.utils import OTHER, PUSH, REPO, Calls, new_secret, post_signed, signed_request
from tests.utils import FIXTURES, ServerProcess, metric_sum, running_server


def stored_deliveries(server: ServerProcess, repository_id: str) -> list[str]:
    response = httpx.get(f"{server.url}/v1/events/{repository_id}", timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [event["delivery_id"] for event in response.json()["events"]]


def received(server: ServerProcess, outcome: str) -> float:
    return metric_sum(server.url, "gitstafette_webhooks_received_total", outcome=outcome)


def test_wrong_or_missing_signature_gets_401_and_nothing_is_stored() -> None:
    secret = new_secret("webhook")
    with running_server("--store", "memory://", env={"GITSTAFETTE_WEBHOOK_SECRET": secret}) as server:
        wrong, wrong_id = post_signed(server, new_secret("not-it"))
        assert wrong.status_code == 401, wrong.text
        assert wrong.json()["detail"] == "signature check failed: X-Hub-Signature-256 does not match the body"

        missing, missing_id = post_signed(server, None)
        assert missing.status_code == 401
        assert "missing X-Hub-Signature-256" in missing.json()["detail"]

        headers, body, _ = signed_request(secret)
        altered = httpx.post(f"{server.url}/v1/github/", headers=headers, content=body.replace(b'"', b"'", 1))
        assert altered.status_code == 401

        assert stored_deliveries(server, REPO) == []
        assert received(server, "rejected-signature") == 3

        good, good_id = post_signed(server, secret)
        assert good.status_code == 201, good.text
        assert stored_deliveries(server, REPO) == [good_id]
        assert wrong_id != good_id != missing_id
        assert received(server, "stored") == 1
    assert "no webhook secret" not in server.log()
    assert secret not in server.log()


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_per_repository_secrets_file(tmp_path: Path, suffix: str) -> None:
    default, own, named = new_secret("default"), new_secret("own"), new_secret("named")
    path = tmp_path / f"secrets{suffix}"
    if suffix == ".yaml":
        path.write_text(f'"{OTHER}": "{own}"\nOctocoders/Hello-World: "{named}"\n')
    else:
        path.write_text(f'"{OTHER}" = "{own}"\n"Octocoders/Hello-World" = "{named}"\n')
    with running_server(
        "--store", "memory://", "--webhook-secrets-file", str(path), env={"GITSTAFETTE_WEBHOOK_SECRET": default}
    ) as server:
        # A repository with a secret of its own: that one, and not the default.
        assert post_signed(server, own, repository_id=OTHER)[0].status_code == 201
        assert post_signed(server, default, repository_id=OTHER)[0].status_code == 401
        # By owner/name (ping.0.json is Octocoders/Hello-World).
        ping = FIXTURES / "ping.0.json"
        assert post_signed(server, named, ping)[0].status_code == 201
        assert post_signed(server, default, ping)[0].status_code == 401
        # Every other repository: the default.
        assert post_signed(server, default, PUSH)[0].status_code == 201
        assert post_signed(server, own, PUSH)[0].status_code == 401


def test_a_server_without_a_secret_says_so_once_and_accepts_unsigned_webhooks() -> None:
    with running_server("--store", "memory://") as server:
        assert post_signed(server, None)[0].status_code == 201
        assert post_signed(server, None)[0].status_code == 201
    assert server.log().count("no webhook secret") == 1


def test_an_unusable_secrets_file_stops_the_server_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    leaked = new_secret("leak")
    path.write_text(f"not a repo: {leaked}\n")
    server = ServerProcess("--store", "memory://", "--webhook-secrets-file", str(path))
    try:
        with pytest.raises(RuntimeError, match="exited during startup") as info:
            server.start()
    finally:
        server.kill()
    assert server.process is not None and server.process.returncode == 2
    assert "'not a repo' is neither a GitHub repository id" in str(info.value)
    assert leaked not in str(info.value)


async def test_webhook_event_push_checks_the_signature_the_same_way() -> None:
    secret = new_secret("webhook")
    with running_server("--store", "memory://", env={"GITSTAFETTE_WEBHOOK_SECRET": secret}) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            calls = Calls(channel, None)
            headers, body, _ = signed_request(new_secret("wrong"))
            refused = await calls.push_response(REPO, body, headers)
            assert (refused.response_code, refused.accepted) == ("401", False)
            assert "does not match the body" in refused.response_description

            headers, body, _ = signed_request(None)
            assert (await calls.push_response(REPO, body, headers)).response_code == "401"

            headers, body, _ = signed_request(secret)
            accepted = await calls.push_response(REPO, body, headers)
            assert (accepted.response_code, accepted.accepted) == ("201", True)
        assert stored_deliveries(server, REPO) == [headers["X-GitHub-Delivery"]]
