"""TLS at run time: the server's certificate (renewed without a restart) and the client's channel credentials.

Server: one :class:`ServerTls` serves both listeners. gRPC gets ``grpc.dynamic_ssl_server_credentials``,
whose fetcher gRPC calls on each new handshake; HTTP (uvicorn) gets an ``ssl.SSLContext`` whose SNI
callback, also run on each handshake, points the connection at the newest context. Every
``reload_interval_s`` the certificate files are checked (modification time, size, inode: a renewal by
cert-manager or a Kubernetes secret swaps a symlink, certbot rewrites the files); when they changed they are
read, checked (the key matches the certificate, the CA file parses) and only then put in use, for both
listeners at once. Connections already open keep the certificate they started with. A half-written
renewal (the new certificate, the old key) is not used: the current certificate stays until the files
agree again.

Mutual TLS (``--tls-client-ca``) is asked on the gRPC port only: GitHub presents no client certificate,
so the webhook port would refuse GitHub itself.

Client: :func:`client_credentials` reads its files again for each connection attempt, so a renewed
client certificate is used from the next reconnect on.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gitstafette.config import ClientTlsConfig, ServerTlsConfig
from gitstafette.exceptions import ConfigError
from gitstafette.security.certs import describe

__all__ = ["ServerTls", "client_channel_options", "client_credentials", "describe_client_tls"]

logger = logging.getLogger(__name__)

#: A certificate this close to its end gets a warning at startup and on each reload.
EXPIRY_WARNING = datetime.timedelta(days=7)

#: (mtime_ns, size, inode) of each watched file: a change of any means the file was replaced or rewritten.
_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[str, ...]) -> _Stamp:
    stats = [os.stat(path) for path in paths]
    return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in stats)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from exc


def _certificates(data: bytes, path: str, flag: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {path} holds no PEM certificate") from exc
    return certificates


def _check_key(certificate: x509.Certificate, key_pem: bytes, key_path: str, flag: str) -> None:
    """The key is a private key and belongs to the certificate (its message never quotes the key)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{flag}: {key_path} holds no unencrypted PEM private key") from exc
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != certificate.public_key().public_bytes(*raw):
        raise ConfigError(f"{flag}: {key_path} is not the key of the certificate ({describe(certificate)})")


def _warn_if_expired(certificate: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc <= now:
        logger.warning("the TLS certificate has expired: clients refuse it (%s)", describe(certificate))
    elif certificate.not_valid_before_utc > now:
        logger.warning("the TLS certificate is not valid yet: clients refuse it (%s)", describe(certificate))
    elif certificate.not_valid_after_utc - now < EXPIRY_WARNING:
        logger.warning("the TLS certificate expires soon: renew it (%s)", describe(certificate))


@dataclass(frozen=True)
class _Material:
    """One loaded and checked set of server files, ready for both listeners."""

    stamp: _Stamp
    certificate: x509.Certificate
    grpc_config: grpc.ServerCertificateConfiguration
    http_context: ssl.SSLContext


class ServerTls:
    """The server's certificate, key and (for mutual TLS) client CA, watched for renewal.

    :param config: the files; ``config.enabled`` must be true.
    """

    def __init__(self, config: ServerTlsConfig) -> None:
        if not config.enabled:
            raise ValueError("ServerTls needs a certificate and a key")
        self.config = config
        self._paths = tuple(path for path in (config.cert, config.key, config.client_ca) if path)
        self._material = self._load()
        #: why the changed files could not be used, the last time they were tried (logged once per problem)
        self._problem = ""
        self._grpc_served: _Material | None = None
        self._lock = threading.Lock()
        self._listener = self._material.http_context
        self._listener.sni_callback = self._on_handshake

    def log_startup(self) -> None:
        """What the listeners present and ask for, and whether the certificate is about to fail."""
        mutual = (
            f"mutual TLS on gRPC: clients must present a certificate signed by a CA in {self.config.client_ca} "
            "(the HTTP port asks for none: GitHub has none to give)"
            if self.config.mutual
            else "no client certificates asked for (--tls-client-ca turns on mutual TLS for gRPC)"
        )
        logger.info("TLS on HTTP and gRPC: %s; %s", self.describe(), mutual)
        logger.info("TLS: certificate files are checked for renewal every %gs", self.config.reload_interval_s)
        _warn_if_expired(self.certificate)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate new connections get."""
        return self._material.certificate

    def describe(self) -> str:
        return describe(self.certificate)

    # ---- loading -----------------------------------------------------------------------------------

    def _load(self) -> _Material:
        """Read and check the files; raises ``ConfigError`` naming the flag and file at fault."""
        config = self.config
        try:
            before = _stamp(self._paths)
        except OSError as exc:
            raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror or exc}") from exc
        cert_pem = _read(config.cert, "tls-cert")
        key_pem = _read(config.key, "tls-key")
        chain = _certificates(cert_pem, config.cert, "tls-cert")
        _check_key(chain[0], key_pem, config.key, "tls-key")
        client_ca_pem: bytes | None = None
        if config.client_ca:
            client_ca_pem = _read(config.client_ca, "tls-client-ca")
            _certificates(client_ca_pem, config.client_ca, "tls-client-ca")
        context = self._http_context()
        # An SSLContext loads from paths only: what it read must be what was checked above, so the files
        # must not have changed in between (a renewal under way is picked up on the next check).
        try:
            context.load_cert_chain(config.cert, config.key)
        except OSError as exc:  # ssl.SSLError is one
            raise ConfigError(f"tls-cert: cannot use {config.cert} with {config.key}: {exc}") from exc
        if _stamp(self._paths) != before:
            raise ConfigError("tls: the certificate files changed while they were read")
        grpc_config = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=client_ca_pem)
        return _Material(before, chain[0], grpc_config, context)

    @staticmethod
    def _http_context() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # httptools speaks HTTP/1.1 only; the mutual TLS of the gRPC port is not asked here (see the module).
        context.set_alpn_protocols(["http/1.1"])
        return context

    def check(self) -> bool:
        """Load the files again if they changed since the last load; True when a new certificate is in use.

        Files that cannot be used (one missing for a moment, a key that does not match the certificate yet)
        leave the current certificate in use; the problem is logged once and the files are tried again on
        the next check.
        """
        try:
            if _stamp(self._paths) == self._material.stamp:
                return False
            material = self._load()
        except (ConfigError, OSError) as exc:
            problem = str(exc)
            if problem != self._problem:
                self._problem = problem
                logger.warning("TLS files changed but cannot be used (yet); keeping the current certificate: %s", exc)
            return False
        self._material = material
        self._problem = ""
        logger.info("TLS certificate reloaded: %s", describe(material.certificate))
        _warn_if_expired(material.certificate)
        return True

    async def watch(self) -> None:
        """Check the files every ``reload_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            self.check()

    # ---- the two listeners -------------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``; they follow every reload, on the next handshake."""
        with self._lock:
            self._grpc_served = self._material
        return grpc.dynamic_ssl_server_credentials(
            self._material.grpc_config,
            self._fetch_grpc_config,
            require_client_authentication=self.config.mutual,
        )

    def _fetch_grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC asks on each new handshake, from its own threads: the new configuration once, else None."""
        with self._lock:
            material = self._material
            if material is self._grpc_served:
                return None
            self._grpc_served = material
            return material.grpc_config

    def http_context(self) -> ssl.SSLContext:
        """The context for the HTTP listener; it hands each new connection the newest certificate."""
        return self._listener

    def _on_handshake(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        # Called for every TLS handshake, with or without SNI; switching the context switches the certificate.
        connection.context = self._material.http_context

    def __repr__(self) -> str:
        return f"ServerTls(cert={self.config.cert!r}, mutual={self.config.mutual}, {self.describe()})"


# ---- client ------------------------------------------------------------------------------------------


def client_credentials(config: ClientTlsConfig) -> grpc.ChannelCredentials:
    """Channel credentials from the files as they are now; raises ``ConfigError`` naming the file at fault."""
    root = _read(config.ca, "tls-ca") if config.ca else None
    if root is not None:
        _certificates(root, config.ca, "tls-ca")
    cert_pem = key_pem = None
    if config.cert:
        cert_pem = _read(config.cert, "tls-cert")
        key_pem = _read(config.key, "tls-key")
        _check_key(_certificates(cert_pem, config.cert, "tls-cert")[0], key_pem, config.key, "tls-key")
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key_pem, certificate_chain=cert_pem)


def client_channel_options(config: ClientTlsConfig) -> list[tuple[str, str]]:
    """``grpc.ssl_target_name_override`` when the server's certificate is checked for another name."""
    return [("grpc.ssl_target_name_override", config.server_name)] if config.server_name else []


def describe_client_tls(config: ClientTlsConfig) -> str:
    """One line for the startup log: whom the client trusts and what it presents."""
    trust = f"servers signed by the CA in {config.ca}" if config.ca else "servers signed by the system's roots"
    parts = [f"trusting {trust}"]
    if config.cert:
        chain = _certificates(_read(config.cert, "tls-cert"), config.cert, "tls-cert")
        parts.append(f"presenting a client certificate (mutual TLS): {describe(chain[0])}")
    if config.server_name:
        parts.append(f"checking the server's certificate for the name {config.server_name!r}")
    return "; ".join(parts)
