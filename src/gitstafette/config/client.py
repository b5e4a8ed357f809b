"""What ``gitstafette client`` runs with: :class:`ClientConfig` (its target and servers are checked at start)
and :class:`ClientTlsConfig`."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from gitstafette import constants
from gitstafette.config.otel import OtelSettings
from gitstafette.exceptions import ConfigError
from gitstafette.security.secret import Secret

__all__ = ["ClientConfig", "ClientTlsConfig"]


TargetKind = Literal["http", "grpc"]

_TARGET_SCHEMES: dict[str, TargetKind] = {"http": "http", "https": "http", "grpc": "grpc", "grpcs": "grpc"}
_SERVER_ADDRESS = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[\w.-]+):(\d{1,5})$")


def _redact_url(url: str) -> str:
    """``https://user:secret@host/x`` → ``https://***@host/x``: credentials never reach a log."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _check_address(name: str, display: str, parts: SplitResult, port_required: bool) -> None:
    """Refuse at start what every delivery would fail on later: a port outside 1-65535 (or none where one
    is needed), and a host that is neither an IP address nor a DNS name (``999.1.1.1``, ``ex ample``)."""
    try:
        port = parts.port
    except ValueError:  # urllib's word for a port that is not a number in 0-65535
        port = -1
    if port is not None and not 0 < port <= 65535:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ConfigError(f"{name}: {display!r}: port {port_text!r} is not a TCP port (1-65535)")
    if port is None and port_required:
        raise ConfigError(f"{name}: {display!r} names no port; use grpc(s)://host:port")
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    # Digits and dots only is an IPv4 address or nothing: a resolver would take 999.1.1.1 for a name.
    looks_ipv4 = re.fullmatch(r"[\d.]+", host) is not None
    labels = host.removesuffix(".").split(".")
    if looks_ipv4 or len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ConfigError(f"{name}: {display!r}: {host!r} is neither an IP address nor a host name")


@dataclass(frozen=True)
class ClientTlsConfig:
    """How the client's gRPC connection to the server is secured (unless ``ClientConfig.insecure``).

    :param ca: PEM CA certificate(s) the server's certificate must chain to; empty: the system's roots.
    :param cert: PEM client certificate chain, for servers that ask for one (mutual TLS).
    :param key: its PEM private key (unencrypted).
    :param server_name: check the server's certificate for this name instead of the host dialled.
    """

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.ca or self.cert or self.server_name)

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("tls-cert and tls-key go together: give both for mutual TLS, or neither")


@dataclass(frozen=True)
class ClientConfig:
    """Everything ``gitstafette client`` needs.

    :param repositories: GitHub repository ids (or owner/name) to subscribe to.
    :param target: where events go: ``http(s)://…`` (a POST per event) or ``grpc(s)://host:port`` (another
        gitstafette server, through ``WebhookEventPush``).
    :param servers: gitstafette servers as ``HOST:PORT``, tried in turn when (re)connecting.
    :param max_delivery_age_s: how long one event is retried, from its first attempt, before it is
        dead-lettered (time paused for an unhealthy target does not count).
    :param idle_timeout_s: a stream that carried nothing (no event, no heartbeat) this long is reconnected;
        the server sends a heartbeat at least every 15 s.
    :param webhook_secret: with it (or ``webhook_secrets_file``), an event whose ``X-Hub-Signature-256``
        does not match its body is never delivered: it is reported to the server as a dead letter.
    """

    repositories: tuple[str, ...]
    target: str
    servers: tuple[str, ...] = (f"127.0.0.1:{constants.DEFAULT_GRPC_PORT}",)
    client_id: str = field(default_factory=socket.gethostname)
    insecure: bool = False
    target_health_url: str = ""
    health_host: str = "0.0.0.0"
    health_port: int = constants.DEFAULT_CLIENT_HEALTH_PORT
    max_delivery_age_s: float = 3600.0
    delivery_timeout_s: float = 30.0
    retry_initial_delay_s: float = 0.1
    retry_max_delay_s: float = 30.0
    #: a target's Retry-After is honoured up to this long
    retry_after_max_s: float = 300.0
    reconnect_initial_delay_s: float = 0.5
    reconnect_max_delay_s: float = 30.0
    #: how often a server that refused this client (its token) is asked again: the refusal lasts until its
    #: tokens file or this client's token changes, so it is not retried at the pace of a network blip
    refused_retry_delay_s: float = 60.0
    idle_timeout_s: float = 45.0
    shutdown_grace_s: float = constants.DEFAULT_SHUTDOWN_GRACE_S
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)
    #: sent as ``authorization: Bearer …`` on every call to the server
    token: Secret | None = None
    #: GitHub's webhook secret(s): each event's signature is checked again before it is delivered
    webhook_secret: Secret | None = None
    webhook_secrets_file: str = ""
    #: for a ``grpc://`` target: the token the downstream server knows this client by
    target_token: Secret | None = None
    #: OpenTelemetry traces and OTLP metrics (off by default)
    otel: OtelSettings = field(default_factory=lambda: OtelSettings(False, constants.CLIENT_SERVICE_NAME))
    #: report errors, signature failures and dead letters to this Sentry project (SENTRY_DSN)
    sentry_dsn: Secret | None = None
    #: once the health port listens, a JSON file of the pid, health_host and health_port (removed at shutdown)
    ready_file: str = ""

    @staticmethod
    def split(values: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Values given several times, comma- or space-separated, in order and without repeats."""
        items = [values] if isinstance(values, str) else list(values)
        parts = (part.strip() for item in items for part in re.split(r"[,\s]+", item))
        return tuple(dict.fromkeys(part for part in parts if part))

    @property
    def target_kind(self) -> TargetKind:
        return _TARGET_SCHEMES[urlsplit(self.target).scheme.lower()]

    @property
    def target_display(self) -> str:
        """The target URL for logs, without credentials."""
        return _redact_url(self.target)

    @property
    def target_health_display(self) -> str:
        return _redact_url(self.target_health_url)

    def __post_init__(self) -> None:
        self._check_repositories()
        self._check_servers()
        self._check_urls()
        if not self.client_id:
            raise ConfigError("client-id must not be empty")
        if self.insecure and self.tls.configured:
            raise ConfigError("insecure is plaintext: it cannot go with tls-ca, tls-cert, tls-key or tls-server-name")
        if not 0 <= self.health_port <= 65535:
            raise ConfigError(f"health-port: {self.health_port} is not a TCP port (0-65535)")
        self._check_durations()

    def _check_repositories(self) -> None:
        if not self.repositories:
            raise ConfigError("repositories: name at least one repository (GitHub repository id or owner/name)")
        for item in self.repositories:
            if not (item.isdigit() or re.fullmatch(r"[\w.-]+/[\w.-]+", item)):
                raise ConfigError(f"repositories: {item!r} is neither a GitHub repository id (digits) nor owner/name")

    def _check_servers(self) -> None:
        if not self.servers:
            raise ConfigError("server: name at least one server as HOST:PORT")
        for address in self.servers:
            match = _SERVER_ADDRESS.match(address)
            if not match or not 0 < int(match.group(1)) <= 65535:
                raise ConfigError(f"server: {address!r} is not HOST:PORT (for example 127.0.0.1:50051)")

    def _check_urls(self) -> None:
        target = urlsplit(self.target)
        if target.scheme.lower() not in _TARGET_SCHEMES or not target.hostname:
            raise ConfigError(
                f"target: {self.target_display!r} is not a URL of http(s)://host/path or grpc(s)://host:port"
            )
        # gRPC has no default port a target could mean; an HTTP URL has its scheme's.
        _check_address("target", self.target_display, target, port_required=self.target_kind == "grpc")
        if self.target_health_url:
            health = urlsplit(self.target_health_url)
            if health.scheme.lower() not in ("http", "https") or not health.hostname:
                raise ConfigError(f"target-health-url: {self.target_health_display!r} is not an http(s) URL")
            _check_address("target-health-url", self.target_health_display, health, port_required=False)

    def _check_durations(self) -> None:
        for name in (
            "max_delivery_age_s",
            "delivery_timeout_s",
            "retry_max_delay_s",
            "retry_initial_delay_s",
            "reconnect_max_delay_s",
            "reconnect_initial_delay_s",
            "refused_retry_delay_s",
            "idle_timeout_s",
            "shutdown_grace_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.removesuffix('_s').replace('_', '-')} must be positive")
        if self.retry_max_delay_s < self.retry_initial_delay_s:
            raise ConfigError("retry-max-delay must be at least the initial retry delay")
        if self.reconnect_max_delay_s < self.reconnect_initial_delay_s:
            raise ConfigError("reconnect-max-delay must be at least the initial reconnect delay")

    def __repr__(self) -> str:
        return (
            f"ClientConfig(client_id={self.client_id!r}, servers={self.servers!r}, "
            f"repositories={self.repositories!r}, target={self.target_display!r})"
        )
