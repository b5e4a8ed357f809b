"""End to end with real processes: a signed webhook through the server and the real client with a scoped
token; a relay that alters events is caught by a client that holds the webhook secret."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from tests.client.utils import RecordingTarget, running_client, wait_until
from tests.security.utils import (
    REPO,
    TAMPERING_SERVER,
    admin_get,
    make_token,
    new_secret,
    signed_request,
    write_tokens,
)
from tests.tls.utils import Pki, TlsClientProcess, https_url, tls_client_args, trusting
from tests.utils import running_server


def test_a_signed_webhook_reaches_the_target_through_a_client_with_a_scoped_token(
    tmp_path: Path, target: RecordingTarget
) -> None:
    secret, admin = new_secret("webhook"), new_secret("admin")
    jenkins = make_token("jenkins", REPO)
    tokens_file = write_tokens(tmp_path / "tokens.toml", jenkins, make_token("other", "537845873"))
    server_env = {"GITSTAFETTE_WEBHOOK_SECRET": secret, "GITSTAFETTE_ADMIN_TOKEN": admin}
    client_env = {"GITSTAFETTE_TOKEN": jenkins.value, "GITSTAFETTE_WEBHOOK_SECRET": secret}
    with (
        running_server("--store", "memory://", "--tokens-file", str(tokens_file), env=server_env) as server,
        running_client(server, [REPO], target.url, "claims-another-id", env=client_env) as client,
    ):
        client.wait_connected()
        headers, body, _ = signed_request(secret)
        assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 201
        wait_until(lambda: target.delivered(), message="the webhook at the target")

        [received] = target.delivered()
        assert received.body == body
        assert received.header("X-Hub-Signature-256") == headers["X-Hub-Signature-256"]
        assert client.metric("gitstafette_client_events_settled_total", outcome="delivered") == 1

        def audit() -> list[tuple[str, str]]:
            [event] = admin_get(server, f"/v1/events/{REPO}", admin).json()["events"]
            return [(a["client_id"], a["action"]) for a in event["audit"]]

        # The token's client id, not the one the client claims.
        wait_until(lambda: audit() == [("jenkins", "sent"), ("jenkins", "acknowledged")], message="the audit")


def test_a_chained_client_pushes_with_the_downstream_servers_token(tmp_path: Path, target: RecordingTarget) -> None:
    admin, pusher = new_secret("admin"), make_token("upstream", REPO)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", pusher)
    with (
        running_server("--store", "memory://") as upstream,
        running_server(
            "--store", "memory://", "--tokens-file", str(tokens_file), env={"GITSTAFETTE_ADMIN_TOKEN": admin}
        ) as downstream,
        running_client(
            upstream,
            [REPO],
            f"grpc://{downstream.grpc_target}",
            "chain",
            env={"GITSTAFETTE_TARGET_TOKEN": pusher.value},
        ) as client,
    ):
        client.wait_connected()
        headers, body, _ = signed_request(None)
        assert httpx.post(f"{upstream.url}/v1/github/", headers=headers, content=body).status_code == 201

        def downstream_deliveries() -> list[str]:
            response = admin_get(downstream, f"/v1/events/{REPO}", admin)
            return [e["delivery_id"] for e in response.json()["events"]] if response.status_code == 200 else []

        assert wait_until(downstream_deliveries, message="the event downstream") == [headers["X-GitHub-Delivery"]]
    assert pusher.value not in client.log()


def test_a_body_altered_between_server_and_client_is_dead_lettered_by_a_client_holding_the_secret(
    target: RecordingTarget,
) -> None:
    secret, admin = new_secret("webhook"), new_secret("admin")
    server_env = {"GITSTAFETTE_WEBHOOK_SECRET": secret, "GITSTAFETTE_ADMIN_TOKEN": admin}
    with (
        RecordingTarget() as naive_target,
        running_server(
            "--store", "memory://", env=server_env, program=[sys.executable, str(TAMPERING_SERVER)]
        ) as server,
        running_client(server, [REPO], target.url, "careful", env={"GITSTAFETTE_WEBHOOK_SECRET": secret}) as careful,
        running_client(server, [REPO], naive_target.url, "naive") as naive,
    ):
        careful.wait_connected()
        naive.wait_connected()
        headers, body, _ = signed_request(secret)
        # The server itself checked GitHub's signature: the webhook is stored as it came.
        assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 201

        def dead_letters() -> list[dict[str, object]]:
            response = admin_get(server, "/v1/dead-letters?client_id=careful", admin)
            response.raise_for_status()
            letters: list[dict[str, object]] = response.json()["dead_letters"]
            return letters

        [letter] = wait_until(dead_letters, message="the dead letter of the careful client")
        assert letter["delivery_id"] == headers["X-GitHub-Delivery"]
        assert "refused by the client, not delivered: X-Hub-Signature-256 does not match the body" in str(
            letter["reason"]
        )
        assert careful.metric("gitstafette_client_events_settled_total", outcome="bad-signature") == 1
        # A client without the secret cannot tell: the altered body reaches its target.
        wait_until(lambda: naive_target.delivered(), message="the naive delivery")
        [altered] = naive_target.delivered()
        assert altered.body != body and len(altered.body) == len(body)

    assert target.posts() == [], "the careful client delivered an altered event"
    log = careful.log()
    assert "not delivered: X-Hub-Signature-256 does not match the body" in log
    assert body.decode()[:40] not in log and altered.body.decode()[:40] not in log


def test_a_signed_webhook_over_mutual_tls_with_a_scoped_token(tmp_path: Path, target: RecordingTarget) -> None:
    """Every boundary at once: HTTPS for GitHub, mutual TLS and a scoped token for the client, the signature
    checked by the server and again by the client."""
    pki = Pki(tmp_path / "pki")
    jenkins_certificate = pki.client("jenkins")
    secret, admin = new_secret("webhook"), new_secret("admin")
    jenkins = make_token("jenkins", REPO)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", jenkins)
    server_env = {"GITSTAFETTE_WEBHOOK_SECRET": secret, "GITSTAFETTE_ADMIN_TOKEN": admin}
    with running_server(
        "--store", "memory://", "--tokens-file", str(tokens_file), *pki.server_args(), env=server_env
    ) as server:
        client = TlsClientProcess(
            [server.grpc_target], [REPO], target.url, "jenkins", *tls_client_args(pki.ca, jenkins_certificate)
        )
        client.env.update({"GITSTAFETTE_TOKEN": jenkins.value, "GITSTAFETTE_WEBHOOK_SECRET": secret})
        client.start()
        try:
            client.wait_connected()
            with httpx.Client(verify=trusting(pki.ca), timeout=10) as https:
                for signature_secret, status in ((new_secret("forged"), 401), (secret, 201)):
                    headers, body, _ = signed_request(signature_secret)
                    answer = https.post(https_url(server, "/v1/github/"), headers=headers, content=body)
                    assert answer.status_code == status, answer.text
                wait_until(lambda: target.delivered(), message="the webhook at the target")
                [received] = target.delivered()
                assert received.body == body and received.delivery_id == headers["X-GitHub-Delivery"]
                listing = https.get(
                    https_url(server, f"/v1/events/{REPO}"), headers={"Authorization": f"Bearer {admin}"}
                )
                assert listing.status_code == 200 and len(listing.json()["events"]) == 1
        finally:
            client.stop()
    assert "mutual TLS" in client.log() and "plaintext" not in client.log()
    for value in (secret, admin, jenkins.value):
        assert value not in client.log() + server.log()
