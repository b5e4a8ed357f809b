"""For the TLS tests: certificates made with gitstafette's own code, and TLS probes of a running server."""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitstafette.security.certs import CERT_VALID_DAYS, Issued, create_ca, issue
from tests.client.utils import PUSH, ClientProcess
from tests.utils import ServerProcess, github_request, running

SERVER_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Files:
    """A certificate and its key on disk."""

    cert: Path
    key: Path

    @classmethod
    def write(cls, issued: Issued, folder: Path, name: str) -> Files:
        files = cls(folder / f"{name}.pem", folder / f"{name}-key.pem")
        issued.write(files.cert, files.key)
        return files


class Pki:
    """A CA in ``folder`` and what it issues: ``server`` (for :data:`SERVER_NAMES`), ``client("name")``."""

    def __init__(self, folder: Path, name: str = "test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.authority = create_ca(name)
        self.ca = folder / "ca.pem"
        self.ca.write_bytes(self.authority.cert_pem)
        self.server_issued = issue(self.authority, SERVER_NAMES, "server")
        self.server = Files.write(self.server_issued, folder, "server")

    def client(
        self, name: str, *, not_before: datetime.datetime | None = None, valid_days: float = CERT_VALID_DAYS
    ) -> Files:
        """A client certificate; ``not_before`` and ``valid_days`` place its validity window (past: expired)."""
        issued = issue(self.authority, [name], "client", not_before=not_before, valid_days=valid_days)
        return Files.write(issued, self.folder, f"client-{name}")

    def expired_client(self, name: str) -> Files:
        three_days_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
        return self.client(name, not_before=three_days_ago, valid_days=1)

    def server_args(self, mutual: bool = True) -> list[str]:
        args = ["--tls-cert", str(self.server.cert), "--tls-key", str(self.server.key)]
        return [*args, "--tls-client-ca", str(self.ca)] if mutual else args


def https_url(server: ServerProcess, path: str = "/") -> str:
    return f"https://127.0.0.1:{server.http_port}{path}"


def trusting(*cas: Path) -> ssl.SSLContext:
    """A client context trusting exactly these CAs (and checking the host name)."""
    return ssl.create_default_context(cadata="".join(ca.read_text() for ca in cas))


def https_post_webhook(server: ServerProcess, ca: Path, path: Path = PUSH) -> str:
    """Post a fixture as GitHub would, over HTTPS trusting ``ca``; returns its delivery id."""
    headers, body, _repository = github_request(path)
    with httpx.Client(verify=trusting(ca), timeout=10) as http:
        response = http.post(https_url(server, "/v1/github/"), headers=headers, content=body)
    assert response.status_code == 201, response.text
    return headers["X-GitHub-Delivery"]


def http_peer_certificate(server: ServerProcess, *cas: Path) -> x509.Certificate:
    """The certificate the HTTP port presents to a new connection (verified against ``cas``)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        with trusting(*cas).wrap_socket(sock, server_hostname="127.0.0.1") as connection:
            der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def grpc_check(
    server: ServerProcess, ca: Path | None = None, client: Files | None = None, server_name: str = ""
) -> grpc.StatusCode:
    """One health check on a new connection: TLS trusting ``ca`` (plaintext when None), presenting ``client``."""
    if ca is None:
        channel = grpc.insecure_channel(server.grpc_target)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None,
        )
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(server.grpc_target, credentials, options=options)
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


class TlsClientProcess(ClientProcess):
    """``gitstafette client`` speaking TLS: the test client's command without ``--insecure``."""

    def __init__(self, servers: list[str], repositories: list[str], target: str, client_id: str, *args: str) -> None:
        super().__init__(servers, repositories, target, client_id, *args)
        self.command.remove("--insecure")


def tls_client_args(ca: Path, client: Files | None) -> list[str]:
    args = ["--tls-ca", str(ca)]
    return [*args, "--tls-cert", str(client.cert), "--tls-key", str(client.key)] if client else args


@contextmanager
def running_tls_client(
    server: ServerProcess, repositories: list[str], target: str, client_id: str, *args: str
) -> Iterator[ClientProcess]:
    with running(TlsClientProcess([server.grpc_target], repositories, target, client_id, *args)) as client:
        yield client
