"""Certificate rotation: renewed files are picked up by new connections of both ports, without a restart."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitstafette.config import ServerTlsConfig
from gitstafette.exceptions import ConfigError
from gitstafette.security.certs import issue
from gitstafette.security.tls import ServerTls
from tests.client.utils import RecordingTarget, repository_of, wait_until
from tests.tls.utils import (
    SERVER_NAMES,
    Pki,
    grpc_check,
    http_peer_certificate,
    https_post_webhook,
    running_tls_client,
    tls_client_args,
)
from tests.utils import running_server

REPOSITORY = repository_of()


def test_a_renewed_certificate_from_another_ca_is_served_without_a_restart(pki: Pki, tmp_path: Path) -> None:
    jenkins = pki.client("jenkins")
    renewed = Pki(tmp_path / "new", "the new CA")
    args = [*pki.server_args(), "--tls-reload-interval", "0.2s"]
    with running_server("--store", "memory://", *args) as server, RecordingTarget() as target:
        with running_tls_client(server, [REPOSITORY], target.url, "jenkins", *tls_client_args(pki.ca, jenkins)):
            wait_until(lambda: grpc_check(server, pki.ca, jenkins) == grpc.StatusCode.OK, message="the server")
            before = http_peer_certificate(server, pki.ca)
            assert before.serial_number == pki.server_issued.certificate.serial_number
            # A client that trusts only the new CA cannot connect yet.
            assert grpc_check(server, renewed.ca, jenkins) == grpc.StatusCode.UNAVAILABLE

            # Renewal in place, the way certbot writes: first the certificate ...
            renewed.server.cert.replace(pki.server.cert)
            # A certificate without its key is not used: the server says so and serves the old one.
            wait_until(lambda: "keeping the current certificate" in server.log(), message="the half renewal")
            assert "is not the key of the certificate" in server.log()
            assert http_peer_certificate(server, pki.ca).serial_number == before.serial_number
            assert grpc_check(server, pki.ca, jenkins) == grpc.StatusCode.OK
            # ... then its key: from now on new connections get the new certificate.
            renewed.server.key.replace(pki.server.key)
            wait_until(lambda: "TLS certificate reloaded" in server.log(), message="the reload")

            after = http_peer_certificate(server, renewed.ca)
            assert after.serial_number == renewed.server_issued.certificate.serial_number != before.serial_number
            # gRPC: a client trusting only the new CA connects (mutual TLS still asked, against the same client CA);
            # one trusting only the old CA no longer does.
            assert grpc_check(server, renewed.ca, jenkins) == grpc.StatusCode.OK
            assert grpc_check(server, renewed.ca) == grpc.StatusCode.UNAVAILABLE
            assert grpc_check(server, pki.ca, jenkins) == grpc.StatusCode.UNAVAILABLE

            # The stream opened before the renewal keeps its connection and goes on relaying.
            delivery_id = https_post_webhook(server, renewed.ca)
            wait_until(lambda: delivery_id in target.delivered_ids(), message="the webhook at the target")
        assert server.alive()
    assert server.log().count("TLS certificate reloaded") == 1


# ---- ServerTls in-process: what a reload accepts and what it leaves alone --------------------------------


@pytest.fixture
def tls_log() -> Iterator[list[logging.LogRecord]]:
    """The records of gitstafette.security.tls, whatever an earlier test did to logging."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gitstafette.security.tls")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _touch_later(path: Path) -> None:
    """Rewrite ``path`` with a newer mtime (file systems with coarse timestamps would hide a quick rewrite)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_server_tls_reloads_only_a_complete_and_matching_pair(pki: Pki, tls_log: list[logging.LogRecord]) -> None:
    tls = ServerTls(ServerTlsConfig(cert=str(pki.server.cert), key=str(pki.server.key), client_ca=str(pki.ca)))
    first = tls.certificate
    context = tls.http_context()
    assert not tls.check()  # nothing changed

    second = issue(pki.authority, SERVER_NAMES, "server")
    pki.server.cert.write_bytes(second.cert_pem)
    _touch_later(pki.server.cert)
    assert not tls.check() and not tls.check()  # the new certificate, the old key: not used
    assert tls.certificate == first
    warnings = [r for r in tls_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is not the key of the certificate" in warnings[0].getMessage()

    pki.server.key.unlink()  # a key being replaced: missing for a moment
    assert not tls.check()
    pki.server.key.write_bytes(second.key_pem)
    _touch_later(pki.server.key)
    assert tls.check()
    assert tls.certificate == second.certificate
    assert tls.http_context() is context  # the listener's context stays; its handshakes switch to the new one
    assert any("TLS certificate reloaded" in r.getMessage() for r in tls_log)
    for record in tls_log:
        assert "PRIVATE KEY" not in record.getMessage()


def test_server_tls_refuses_unusable_files_at_startup(pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other", "another CA")
    cert, key = str(pki.server.cert), str(pki.server.key)
    cases = {
        "is not the key of the certificate": ServerTlsConfig(cert=cert, key=str(other.server.key)),
        "cannot read": ServerTlsConfig(cert=cert, key=str(tmp_path / "missing.pem")),
        "holds no PEM certificate": ServerTlsConfig(cert=key, key=key),
        "holds no unencrypted PEM private key": ServerTlsConfig(cert=cert, key=cert),
        "tls-client-ca": ServerTlsConfig(cert=cert, key=key, client_ca=key),
    }
    for message, config in cases.items():
        with pytest.raises(ConfigError, match=message) as raised:
            ServerTls(config)
        assert "PRIVATE KEY" not in str(raised.value)
