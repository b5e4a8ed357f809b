"""Development certificates: a CA, a server certificate and client certificates, for trying (mutual) TLS.

``gitstafette certs`` writes them into a folder; the tests use the same functions to make certificates
of other CAs, expired ones and renewed ones. Keys are ECDSA P-256 (small, fast, accepted by gRPC and
every TLS stack of the last decade) and written unencrypted in PKCS#8 PEM with mode 0600.

What each certificate may do is spelled out, so TLS stacks that check it (gRPC's BoringSSL does) accept
each one only in its role: the CA signs certificates and nothing else (``keyCertSign``, path length 0);
the server certificate serves (``serverAuth``) the names it lists, IP addresses as IP SANs; a client
certificate authenticates a client (``clientAuth``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gitstafette import constants
from gitstafette.exceptions import ConfigError

__all__ = [
    "CA_VALID_DAYS",
    "CERT_VALID_DAYS",
    "DevCertificates",
    "Issued",
    "Usage",
    "client_file_names",
    "create_ca",
    "describe",
    "instructions",
    "issue",
    "write_dev_certificates",
    "write_private",
]

#: The development CA is valid for ten years: long enough never to be the thing that expired.
CA_VALID_DAYS = 3650
#: Server and client certificates: one year by default (``--days``).
CERT_VALID_DAYS = 365
#: Certificates start being valid a little before now, so a peer whose clock runs behind accepts them.
_BACKDATE = datetime.timedelta(minutes=5)

Usage = Literal["server", "client"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: a DNS name, or a wildcard one (``*.example.com``)
_DNS_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        """The certificate (mode 0644) and its key (mode 0600)."""
        cert_path.write_bytes(self.cert_pem)
        cert_path.chmod(0o644)
        write_private(key_path, self.key_pem)

    def __repr__(self) -> str:
        return f"Issued({describe(self.certificate)})"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only, from the first byte on (no window with a wider mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        os.write(fd, data)
    finally:
        os.close(fd)


def describe(certificate: x509.Certificate) -> str:
    """``subject CN=…, serial …, valid until …``: what a log line needs to tell one certificate from another."""
    subject = certificate.subject.rfc4514_string() or "(empty subject)"
    until = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    return f"subject {subject}, serial {certificate.serial_number:x}, valid until {until}"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gitstafette development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _window(valid_days: float, not_before: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before or datetime.datetime.now(datetime.UTC) - _BACKDATE
    return start, start + datetime.timedelta(days=valid_days)


def create_ca(
    common_name: str = "gitstafette development CA",
    *,
    valid_days: float = CA_VALID_DAYS,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(valid_days, not_before)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and revocation lists) only; an end entity signs its TLS handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alternative_names(names: Sequence[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not _DNS_NAME.match(name):
                raise ConfigError(f"{name!r} is neither a DNS name nor an IP address") from None
            result.append(x509.DNSName(name.lower()))
    return result


def issue(
    ca: Issued,
    names: Sequence[str],
    usage: Usage,
    *,
    valid_days: float = CERT_VALID_DAYS,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A certificate signed by ``ca`` for ``names`` (the first is the common name; each one a SAN: IP
    addresses as IP SANs, anything else as a DNS name), usable only as a TLS server or only as a client.

    ``not_before`` and ``valid_days`` place the validity window anywhere, in the past too (an expired
    certificate, for tests).
    """
    if not names:
        raise ConfigError("a certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(valid_days, not_before)
    public_key = key.public_key()
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_key_id = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def client_file_names(name: str) -> tuple[str, str]:
    """``client-<name>.pem`` and ``client-<name>-key.pem``."""
    return f"client-{name}.pem", f"client-{name}-key.pem"


@dataclass(frozen=True)
class DevCertificates:
    """What ``write_dev_certificates`` wrote, by role."""

    folder: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    #: client name → (certificate, key)
    clients: dict[str, tuple[Path, Path]]

    def files(self) -> list[Path]:
        paths = [self.ca, self.ca_key, self.server_cert, self.server_key]
        return paths + [path for pair in self.clients.values() for path in pair]


def write_dev_certificates(
    folder: Path,
    server_names: Sequence[str],
    client_names: Sequence[str],
    *,
    valid_days: float = CERT_VALID_DAYS,
    force: bool = False,
) -> DevCertificates:
    """A new CA, a server certificate for ``server_names`` and one client certificate per client name,
    written into ``folder`` (created when missing). Refuses to replace any existing file unless ``force``.

    The CA's key is written too (``ca-key.pem``, mode 0600) so more certificates can be signed later with
    any tool; whoever holds it can mint client certificates the server accepts.
    """
    if not server_names:
        raise ConfigError("server-name: name the server at least once (a DNS name or an IP address)")
    _subject_alternative_names(server_names)  # every name is checked before anything is written
    for name in client_names:
        if not _CLIENT_NAME.match(name):
            raise ConfigError(f"client-name: {name!r} must be letters, digits, '.', '_' or '-' (it names files)")
    if len(set(client_names)) != len(client_names):
        raise ConfigError("client-name: each client name once")
    if valid_days <= 0:
        raise ConfigError("days must be positive")
    result = DevCertificates(
        folder=folder,
        ca=folder / "ca.pem",
        ca_key=folder / "ca-key.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        clients={
            name: (folder / client_file_names(name)[0], folder / client_file_names(name)[1]) for name in client_names
        },
    )
    existing = [path.name for path in result.files() if path.exists()]
    if existing and not force:
        raise ConfigError(f"{folder} already holds {', '.join(existing)}: pass --force to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    ca = create_ca()
    ca.write(result.ca, result.ca_key)
    issue(ca, server_names, "server", valid_days=valid_days).write(result.server_cert, result.server_key)
    for name, (cert_path, key_path) in result.clients.items():
        issue(ca, [name], "client", valid_days=valid_days).write(cert_path, key_path)
    return result


def _host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def instructions(written: DevCertificates, server_names: Sequence[str]) -> list[str]:
    """What ``gitstafette certs`` prints: the files, then the flags that use them."""
    host = _host(server_names[0].replace("*", "relay", 1))
    folder = written.folder
    lines = [
        f"wrote {', '.join(path.name for path in written.files())} into {folder}/",
        f"  server certificate for {', '.join(server_names)}; private keys are mode 0600; "
        "ca-key.pem can sign more certificates: keep it private, or delete it",
        "",
        "server (HTTPS and gRPC over TLS; mutual TLS on gRPC):",
        f"  gitstafette server --tls-cert {written.server_cert} --tls-key {written.server_key} "
        f"--tls-client-ca {written.ca}",
    ]
    for name, (cert, key) in written.clients.items():
        lines += [
            f"client {name}:",
            f"  gitstafette client --server {host}:{constants.DEFAULT_GRPC_PORT} --tls-ca {written.ca} "
            f"--tls-cert {cert} --tls-key {key} --repositories … --target …",
        ]
    lines += ["webhooks (HTTPS):", f"  curl --cacert {written.ca} https://{host}:{constants.DEFAULT_HTTP_PORT}/"]
    return lines
