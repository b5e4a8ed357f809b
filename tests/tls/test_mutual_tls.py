"""TLS on both ports and mutual TLS on gRPC, over real sockets: the happy path and every refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from tests.client.utils import PUSH, RecordingTarget, repository_of, running_client, wait_until
from tests.security.utils import make_token, new_secret, signed_request, write_tokens
from tests.tls.utils import (
    Pki,
    grpc_check,
    http_peer_certificate,
    https_post_webhook,
    https_url,
    running_tls_client,
    tls_client_args,
    trusting,
)
from tests.utils import running_server

REPOSITORY = repository_of()


def test_a_webhook_over_https_is_relayed_end_to_end_over_mutual_tls(pki: Pki) -> None:
    jenkins = pki.client("jenkins")
    with running_server("--store", "memory://", *pki.server_args()) as server, RecordingTarget() as target:
        args = tls_client_args(pki.ca, jenkins)
        with running_tls_client(server, [REPOSITORY], target.url, "jenkins", *args) as client:
            client.wait_connected()
            delivery_id = https_post_webhook(server, pki.ca)
            wait_until(lambda: delivery_id in target.delivered_ids(), message="the webhook at the target")
            assert client.health()["connected"]
            assert http_peer_certificate(server, pki.ca).serial_number == pki.server_issued.certificate.serial_number
            # The command-line tools reach the HTTPS port too, trusting the CA named by SSL_CERT_FILE.
            url = https_url(server, "/v1/github/")
            sent = subprocess.run(
                [sys.executable, "-m", "gitstafette", "send-webhook", str(PUSH), "--url", url],
                env={**os.environ, "SSL_CERT_FILE": str(pki.ca)},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert sent.returncode == 0 and sent.stdout.startswith("201"), sent.stdout + sent.stderr
            wait_until(lambda: len(target.delivered()) == 2, message="the second webhook at the target")
        log = client.log()
        assert "TLS to the server: trusting servers signed by the CA in" in log
        assert "mutual TLS" in log and "plaintext" not in log
    assert "TLS on HTTP and gRPC" in server.log() and "mutual TLS on gRPC" in server.log()
    assert "plaintext" not in server.log()
    assert [delivered.body for delivered in target.delivered()] == [PUSH.read_bytes()] * 2


def test_refusals_fail_the_handshake_and_the_good_client_stays_served(pki: Pki, tmp_path: Path) -> None:
    jenkins = pki.client("jenkins")
    stranger = Pki(tmp_path / "other", "another CA").client("jenkins")
    expired = pki.expired_client("old-jenkins")
    with running_server("--store", "memory://", *pki.server_args()) as server, RecordingTarget() as target:
        args = tls_client_args(pki.ca, jenkins)
        with running_tls_client(server, [REPOSITORY], target.url, "jenkins", *args) as client:
            client.wait_connected()
            # The control: the right CA and a certificate it issued.
            assert grpc_check(server, pki.ca, jenkins) == grpc.StatusCode.OK
            # No client certificate, one from another CA, an expired one, plaintext: the handshake fails.
            assert grpc_check(server, pki.ca) == grpc.StatusCode.UNAVAILABLE
            assert grpc_check(server, pki.ca, stranger) == grpc.StatusCode.UNAVAILABLE
            assert grpc_check(server, pki.ca, expired) == grpc.StatusCode.UNAVAILABLE
            assert grpc_check(server, None) == grpc.StatusCode.UNAVAILABLE
            # The server serves on: the good client's stream is still up and relays the next webhook.
            delivery_id = https_post_webhook(server, pki.ca)
            wait_until(lambda: delivery_id in target.delivered_ids(), message="the webhook at the target")
            assert client.health()["connected"]
            assert server.alive()


@pytest.mark.parametrize("kind", ["no client certificate", "another CA", "expired"])
def test_the_real_client_with_a_refused_certificate_never_connects(pki: Pki, tmp_path: Path, kind: str) -> None:
    certificate = {
        "no client certificate": None,
        "another CA": Pki(tmp_path / "other", "another CA").client("jenkins"),
        "expired": pki.expired_client("jenkins"),
    }[kind]
    with running_server("--store", "memory://", *pki.server_args()) as server, RecordingTarget() as target:
        args = tls_client_args(pki.ca, certificate)
        with running_tls_client(server, [REPOSITORY], target.url, "jenkins", *args) as client:
            wait_until(lambda: "reconnecting" in client.log(), message="a failed connection attempt")
            assert not client.health()["connected"]
            assert "UNAVAILABLE" in client.log()
        assert server.alive()


def test_a_plaintext_client_against_a_tls_server_fails(pki: Pki) -> None:
    with running_server("--store", "memory://", *pki.server_args(mutual=False)) as server, RecordingTarget() as target:
        # The real client with --insecure (what tests/client/utils.py starts) cannot speak to it.
        with running_client(server, [REPOSITORY], target.url, "plain") as client:
            wait_until(lambda: "reconnecting" in client.log(), message="a failed connection attempt")
            assert not client.health()["connected"]
            assert "plaintext: gRPC to the server without TLS (--insecure)" in client.log()
        assert grpc_check(server, None) == grpc.StatusCode.UNAVAILABLE
        # Plain HTTP to the HTTPS port gets no answer; HTTPS does.
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url + "/healthz", timeout=5)
        assert httpx.get(https_url(server, "/healthz"), verify=trusting(pki.ca), timeout=5).status_code == 200
        # Without --tls-client-ca, TLS without a client certificate is enough for gRPC.
        assert grpc_check(server, pki.ca) == grpc.StatusCode.OK


def test_a_server_certificate_is_checked_by_the_client(pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other", "another CA")
    with running_server("--store", "memory://", *pki.server_args(mutual=False)) as server:
        # A client trusting another CA refuses the server.
        assert grpc_check(server, other.ca) == grpc.StatusCode.UNAVAILABLE
        # The certificate names 127.0.0.1 (an IP SAN): no override needed; a name it lacks fails, a name it has works.
        assert grpc_check(server, pki.ca) == grpc.StatusCode.OK
        assert grpc_check(server, pki.ca, server_name="relay.example.com") == grpc.StatusCode.UNAVAILABLE
        assert grpc_check(server, pki.ca, server_name="localhost") == grpc.StatusCode.OK


def test_a_signed_webhook_is_relayed_over_mutual_tls_with_a_scoped_token(pki: Pki, tmp_path: Path) -> None:
    """The whole of the security issue at once: HTTPS in, HMAC checked on the server and again by the client,
    a token scoped to the repository, mutual TLS on the stream."""
    secret = new_secret("webhook")
    token = make_token("jenkins", REPOSITORY)
    tokens = write_tokens(tmp_path / "tokens.yaml", token)
    server_args = [*pki.server_args(), "--webhook-secret", secret, "--tokens-file", str(tokens)]
    client_args = [*tls_client_args(pki.ca, pki.client("jenkins")), "--token", token.value, "--webhook-secret", secret]
    with running_server("--store", "memory://", *server_args) as server, RecordingTarget() as target:
        with running_tls_client(server, [REPOSITORY], target.url, "jenkins", *client_args) as client:
            client.wait_connected()
            headers, body, _repository = signed_request(secret)
            with httpx.Client(verify=trusting(pki.ca), timeout=10) as http:
                response = http.post(https_url(server, "/v1/github/"), headers=headers, content=body)
            assert response.status_code == 201, response.text
            wait_until(lambda: headers["X-GitHub-Delivery"] in target.delivered_ids(), message="the webhook")
            (delivered,) = target.delivered()
            assert delivered.body == body and delivered.header("X-Hub-Signature-256") == headers["X-Hub-Signature-256"]
        logs = server.log() + client.log()
    assert secret not in logs and token.value not in logs
