"""``gitstafette certs`` and the TLS options of ``gitstafette server`` and ``gitstafette client``."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from gitstafette.cli import app
from gitstafette.config import ClientConfig, ClientTlsConfig, ServerTlsConfig
from gitstafette.exceptions import ConfigError
from tests.tls.utils import Files, Pki, grpc_check, http_peer_certificate
from tests.utils import running_server

runner = CliRunner()

FILES = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client-jenkins.pem", "client-jenkins-key.pem"]


def _certs(out: Path, *extra: str) -> subprocess.CompletedProcess[str] | object:
    return runner.invoke(
        app,
        ["certs", "--out", str(out), "--server-name", "localhost", "--server-name", "127.0.0.1"]
        + ["--client-name", "jenkins", *extra],
    )


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_writes_a_ca_a_server_and_a_client_certificate(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = runner.invoke(
        app,
        ["certs", "--out", str(out), "--server-name", "localhost", "--server-name", "127.0.0.1"]
        + ["--client-name", "jenkins"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == sorted(FILES)
    for name in FILES:
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == (0o600 if name.endswith("-key.pem") else 0o644), name
    # It prints the flags that use them.
    assert f"--tls-cert {out / 'server.pem'} --tls-key {out / 'server-key.pem'} --tls-client-ca {out / 'ca.pem'}" in (
        result.output
    )
    assert f"--tls-ca {out / 'ca.pem'} --tls-cert {out / 'client-jenkins.pem'}" in result.output

    ca, server, client = _load(out / "ca.pem"), _load(out / "server.pem"), _load(out / "client-jenkins.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for certificate in (server, client):
        assert certificate.issuer == ca.subject
        assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
        certificate.verify_directly_issued_by(ca)
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert 364 <= lifetime.days <= 366
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    server_usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    client_usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(server_usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(client_usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    # The files work: a server started with the printed flags, a client with its certificate.
    jenkins = Files(out / "client-jenkins.pem", out / "client-jenkins-key.pem")
    server_args = ["--tls-cert", str(out / "server.pem"), "--tls-key", str(out / "server-key.pem")]
    with running_server("--store", "memory://", *server_args, "--tls-client-ca", str(out / "ca.pem")) as process:
        assert grpc_check(process, out / "ca.pem", jenkins) == grpc.StatusCode.OK
        assert grpc_check(process, out / "ca.pem") == grpc.StatusCode.UNAVAILABLE
        assert http_peer_certificate(process, out / "ca.pem").serial_number == server.serial_number
        # A client certificate cannot serve, nor can the server's authenticate a client.
        server_as_client = Files(out / "server.pem", out / "server-key.pem")
        assert grpc_check(process, out / "ca.pem", server_as_client) == grpc.StatusCode.UNAVAILABLE


def test_certs_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert _certs(out).exit_code == 0  # type: ignore[union-attr]
    before = {name: (out / name).read_bytes() for name in FILES}
    result = _certs(out)
    assert result.exit_code == 2  # type: ignore[union-attr]
    assert "pass --force" in result.output  # type: ignore[union-attr]
    assert {name: (out / name).read_bytes() for name in FILES} == before
    # --force replaces them with new ones (a new CA), and keys stay private.
    (out / "server-key.pem").chmod(0o644)
    assert _certs(out, "--force").exit_code == 0  # type: ignore[union-attr]
    assert (out / "ca.pem").read_bytes() != before["ca.pem"]
    assert stat.S_IMODE((out / "server-key.pem").stat().st_mode) == 0o600


def test_certs_defaults_and_bad_names(tmp_path: Path) -> None:
    result = runner.invoke(app, ["certs", "--out", str(tmp_path / "default")])
    assert result.exit_code == 0, result.output
    server = _load(tmp_path / "default" / "server.pem")
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert (tmp_path / "default" / "client-client.pem").exists()
    for bad in (["--server-name", "bad/name"], ["--client-name", "../escape"]):
        result = runner.invoke(app, ["certs", "--out", str(tmp_path / "bad"), *bad])
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "bad").exists()


# ---- the TLS options of server and client ---------------------------------------------------------------


def test_tls_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="go together"):
        ServerTlsConfig(cert="server.pem")
    with pytest.raises(ConfigError, match="mutual TLS is TLS first"):
        ServerTlsConfig(client_ca="ca.pem")
    with pytest.raises(ConfigError, match="go together"):
        ClientTlsConfig(key="client-key.pem")
    with pytest.raises(ConfigError, match="insecure is plaintext"):
        ClientConfig(("1",), "http://target/", insecure=True, tls=ClientTlsConfig(ca="ca.pem"))
    assert not ServerTlsConfig().enabled and ServerTlsConfig(cert="c", key="k", client_ca="ca").mutual


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitstafette", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_unusable_tls_files_stop_server_and_client_at_startup(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert _certs(out).exit_code == 0  # type: ignore[union-attr]
    mismatched = _run(
        "server", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--store", "memory://",
        "--tls-cert", str(out / "server.pem"), "--tls-key", str(out / "client-jenkins-key.pem"),
    )  # fmt: skip
    assert mismatched.returncode == 2, mismatched.stderr
    assert "is not the key of the certificate" in mismatched.stderr
    assert "PRIVATE KEY" not in mismatched.stderr and "listening" not in mismatched.stderr

    half = _run("server", "--tls-cert", str(out / "server.pem"))
    assert half.returncode == 2 and "tls-cert and tls-key go together" in half.stderr

    client = _run(
        "client", "--server", "127.0.0.1:1", "--repositories", "1", "--target", "http://127.0.0.1:1/",
        "--health-host", "127.0.0.1", "--health-port", "0", "--tls-ca", str(tmp_path / "missing.pem"),
    )  # fmt: skip
    assert client.returncode == 2, client.stderr
    assert "tls-ca: cannot read" in client.stderr
    both = _run("client", "--repositories", "1", "--target", "http://x/", "--insecure", "--tls-ca", "ca.pem")
    assert both.returncode == 2 and "insecure is plaintext" in both.stderr


def test_the_server_takes_its_certificate_from_the_environment(pki: Pki) -> None:
    env = {"GITSTAFETTE_TLS_CERT": str(pki.server.cert), "GITSTAFETTE_TLS_KEY": str(pki.server.key)}
    with running_server("--store", "memory://", env=env) as server:
        assert http_peer_certificate(server, pki.ca).serial_number == pki.server_issued.certificate.serial_number
        assert grpc_check(server, pki.ca) == grpc.StatusCode.OK
        assert "plaintext" not in server.log()
