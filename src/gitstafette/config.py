"""Configuration objects: one per process, built once by the CLI and passed to constructors."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, parse_qs, quote, unquote, urlsplit

from gitstafette import constants
from gitstafette.exceptions import ConfigError
from gitstafette.model import Watchlist
from gitstafette.security.secret import Secret
from gitstafette.telemetry.otel import OtelSettings

__all__ = [
    "ClientConfig",
    "ClientTlsConfig",
    "RedisSettings",
    "ServerConfig",
    "ServerTlsConfig",
    "StoreConfig",
    "parse_duration",
    "parse_size",
]

StoreScheme = Literal["memory", "sqlite", "redis"]

#: Every store URL scheme, the backend it picks and the form of its URL: the one list that parsing and
#: the error messages both read, so that a scheme added here is also offered when a URL is refused.
_STORE_URLS: dict[str, tuple[StoreScheme, str]] = {
    "memory": ("memory", "memory://"),
    "sqlite": ("sqlite", "sqlite:///PATH"),
    "redis": ("redis", "redis://HOST:PORT/DB"),
    "rediss": ("redis", "rediss://HOST:PORT/DB"),
    "redis+sentinel": ("redis", "redis+sentinel://SENTINEL:PORT/MASTER/DB"),
    "rediss+sentinel": ("redis", "rediss+sentinel://SENTINEL:PORT/MASTER/DB"),
}
_REDIS_SCHEMES = tuple(scheme for scheme, (backend, _) in _STORE_URLS.items() if backend == "redis")


def _url_forms(schemes: tuple[str, ...] | None = None) -> str:
    """``memory://, sqlite:///PATH, … or rediss+sentinel://…``: the URL forms of ``schemes`` (default: all)."""
    forms = [form for scheme, (_, form) in _STORE_URLS.items() if schemes is None or scheme in schemes]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_duration(text: str | float, name: str = "duration") -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` → seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a duration (examples: 30s, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]


def parse_size(text: str | int, name: str = "size") -> int:
    """``"25MB"``, ``"25MiB"``, ``"1024"`` → bytes (MB = 1,000,000 bytes; MiB = 1,048,576)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a size (examples: 26214400, 25MiB, 512KB)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+$")


def _hosts(netloc: str) -> list[str]:
    """``user:pw@h1:1,h2:2`` → ``["h1:1", "h2:2"]``."""
    return [h for h in netloc.rpartition("@")[2].split(",") if h]


def _host_port(text: str, default_port: int, masked_url: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host or (port_text and not port_text.isdigit()) or not 0 < int(port_text or default_port) < 65536:
        raise ConfigError(f"store: {masked_url!r}: {text!r} is not host:port")
    return host, int(port_text or default_port)


def _masked_url(url: str) -> str:
    """``url`` with its password (if any) replaced: store URLs end up in error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:**********@{host}").geturl()


@dataclass(frozen=True)
class RedisSettings:
    """A Redis server, from ``redis://[[user]:password@]host[:port][/db][?prefix=NAME]`` (``rediss://``: TLS), or
    the master Redis Sentinel names: ``redis+sentinel://[[user]:password@]sentinel[:port][,sentinel…]/master[/db]``
    (the credentials are the master's; the sentinels are asked without; the default port 26379).

    :param prefix: the first part of every key (``prefix:…``), so that several installations can share one
        Redis database; the replicas of one installation must use the same prefix.
    :param lease_ttl_ms: ``?lease_ttl=5s``: how long the repositories a replica serves to a client id stay
        its own without renewal, so how long they wait for another replica when it dies (shorter: faster
        takeover, but a replica that stalls this long loses them).

    Cluster is not supported.
    """

    host: str = "localhost"
    port: int = constants.DEFAULT_REDIS_PORT
    database: int = 0
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    prefix: str = constants.DEFAULT_REDIS_PREFIX
    lease_ttl_ms: int = constants.DEFAULT_REDIS_LEASE_TTL_MS
    #: Sentinel: (host, port) of each sentinel, which say where the master of ``service_name`` is
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        masked = _masked_url(url)
        parts = urlsplit(url)
        sentinel = parts.scheme.endswith("+sentinel")
        if parts.scheme not in _REDIS_SCHEMES:
            raise ConfigError(f"store: {masked!r} is not a Redis URL; use {_url_forms(_REDIS_SCHEMES)}")
        sentinels: tuple[tuple[str, int], ...] = ()
        service_name, path = "", parts.path.strip("/")
        if sentinel:
            sentinels = tuple(_host_port(h, constants.DEFAULT_SENTINEL_PORT, masked) for h in _hosts(parts.netloc))
            service_name, _, path = path.partition("/")
            if not sentinels or not service_name:
                raise ConfigError(
                    f"store: {masked!r}: name the sentinels and the master, e.g. "
                    "redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster/0"
                )
            host, port = sentinels[0]
        else:
            try:
                host, port = parts.hostname or "localhost", parts.port or constants.DEFAULT_REDIS_PORT
            except ValueError as exc:
                raise ConfigError(f"store: {masked!r} has an invalid port") from exc
        if path and not path.isdigit():
            raise ConfigError(f"store: {masked!r}: the path is the database number, e.g. redis://localhost:6379/0")
        options = parse_qs(parts.query, keep_blank_values=True)
        prefix = options.pop("prefix", [constants.DEFAULT_REDIS_PREFIX])[-1]
        lease_ttl = options.pop("lease_ttl", [f"{constants.DEFAULT_REDIS_LEASE_TTL_MS}ms"])[-1]
        if options:
            raise ConfigError(
                f"store: {masked!r}: the only options of a Redis store are ?prefix=NAME and &lease_ttl=DURATION"
            )
        if not _REDIS_PREFIX.match(prefix):
            raise ConfigError(f"store: {masked!r}: the prefix must be letters, digits, '_', '.' or '-'")
        lease_ttl_ms = round(parse_duration(lease_ttl, f"store: {masked!r}: lease_ttl") * 1000)
        if lease_ttl_ms < constants.MIN_REDIS_LEASE_TTL_MS:
            raise ConfigError(
                f"store: {masked!r}: lease_ttl must be at least {constants.MIN_REDIS_LEASE_TTL_MS} ms "
                "(it is renewed every third of it)"
            )
        return cls(
            host=host,
            port=port,
            database=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=Secret.optional(unquote(parts.password)) if parts.password else None,
            tls=parts.scheme.startswith("rediss"),
            prefix=prefix,
            lease_ttl_ms=lease_ttl_ms,
            sentinels=sentinels,
            service_name=service_name,
        )

    def __str__(self) -> str:
        """The URL, with the password masked."""
        credentials = ""
        if self.username or self.password:
            credentials = quote(self.username or "", safe="") + (":**********" if self.password else "") + "@"
        hosts = ",".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels or [(self.host, self.port)]
        )
        options = {}
        if self.prefix != constants.DEFAULT_REDIS_PREFIX:
            options["prefix"] = self.prefix
        if self.lease_ttl_ms != constants.DEFAULT_REDIS_LEASE_TTL_MS:
            options["lease_ttl"] = f"{self.lease_ttl_ms}ms"
        query = "?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else ""
        scheme = ("rediss" if self.tls else "redis") + ("+sentinel" if self.sentinels else "")
        service = f"/{self.service_name}" if self.sentinels else ""
        return f"{scheme}://{credentials}{hosts}{service}/{self.database}{query}"

    def __repr__(self) -> str:
        return f"RedisSettings({str(self)!r})"


@dataclass(frozen=True)
class StoreConfig:
    """Where events are kept, from a URL: ``memory://``, ``sqlite:///path`` (``sqlite:////abs/path``) or
    ``redis://host:port/db`` (see :class:`RedisSettings`: several server replicas may share it).

    ``sqlite:///path?synchronous=normal`` trades the fsync of each commit for latency: a stored event then
    survives a crash of the process but not a power cut of the machine.
    """

    scheme: StoreScheme
    path: str = ""
    synchronous: Literal["full", "normal"] = "full"
    redis: RedisSettings | None = None

    @classmethod
    def from_url(cls, url: str) -> StoreConfig:
        parts = urlsplit(url)
        if parts.scheme == "memory":
            return cls("memory")
        if parts.scheme == "sqlite":
            path = parts.path[1:] if parts.path.startswith("/") else parts.path
            if parts.netloc or not path:
                raise ConfigError(f"store: {url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db")
            options = parse_qs(parts.query)
            synchronous = options.pop("synchronous", ["full"])[-1].lower()
            if synchronous not in ("full", "normal") or options:
                raise ConfigError(f"store: {url!r}: the only option is ?synchronous=full (default) or normal")
            return cls("sqlite", path, "normal" if synchronous == "normal" else "full")
        if parts.scheme in _REDIS_SCHEMES:
            return cls("redis", redis=RedisSettings.from_url(url))
        raise ConfigError(f"store: {_masked_url(url)!r} has an unknown scheme; use {_url_forms()}")

    def __str__(self) -> str:
        if self.scheme == "memory":
            return "memory://"
        if self.scheme == "redis":
            return str(self.redis)
        return f"sqlite:///{self.path}" + ("?synchronous=normal" if self.synchronous == "normal" else "")


@dataclass(frozen=True)
class ServerTlsConfig:
    """The server's certificate files; with none, both listeners speak plaintext.

    :param cert: PEM certificate chain (the server's certificate first), for gRPC and HTTP.
    :param key: its PEM private key (unencrypted).
    :param client_ca: PEM CA certificate(s): gRPC clients must present a certificate one of them signed
        (mutual TLS). Not asked on the HTTP port: GitHub sends webhooks without a client certificate.
    :param reload_interval_s: how often the files are checked for a renewal.
    """

    cert: str = ""
    key: str = ""
    client_ca: str = ""
    reload_interval_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("tls-cert and tls-key go together: give both, or neither for plaintext")
        if self.client_ca and not self.cert:
            raise ConfigError("tls-client-ca needs tls-cert and tls-key: mutual TLS is TLS first")
        if self.reload_interval_s <= 0:
            raise ConfigError("tls-reload-interval must be positive")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``gitstafette server`` needs."""

    repositories: Watchlist = field(default_factory=lambda: Watchlist(everything=True))
    host: str = "0.0.0.0"
    http_port: int = constants.DEFAULT_HTTP_PORT
    grpc_port: int = constants.DEFAULT_GRPC_PORT
    store: StoreConfig = field(default_factory=lambda: StoreConfig("sqlite", constants.DEFAULT_SQLITE_PATH))
    retention_s: float = constants.DEFAULT_RETENTION_S
    max_event_age_s: float = constants.DEFAULT_MAX_EVENT_AGE_S
    max_body_bytes: int = constants.DEFAULT_MAX_BODY_BYTES
    heartbeat_s: float = constants.DEFAULT_HEARTBEAT_S
    shutdown_grace_s: float = constants.DEFAULT_SHUTDOWN_GRACE_S
    server_id: str = field(default_factory=socket.gethostname)
    tls: ServerTlsConfig = field(default_factory=ServerTlsConfig)
    # ---- security: webhook secrets, client tokens, the admin token, limits (see server/auth.py) ----
    #: the webhook secret of every repository without one of its own
    webhook_secret: Secret | None = None
    #: YAML or TOML: repository id or owner/name → webhook secret (re-read on SIGHUP)
    webhook_secrets_file: str = ""
    #: YAML or TOML: SHA-256 hashes of client tokens → client id and repositories (re-read on SIGHUP)
    tokens_file: str = ""
    #: the original's single token (env OAUTH_TOKEN): every repository, the client id the request names
    oauth_token: Secret | None = None
    #: the token of the REST read API, given directly (env) or in a file (re-read on SIGHUP)
    admin_token: Secret | None = None
    admin_token_file: str = ""
    #: open acknowledged streams per client id; 0 = no limit
    max_streams_per_client: int = constants.DEFAULT_MAX_STREAMS_PER_CLIENT
    #: how long the request line and headers, and then the body, of one HTTP request may take to arrive
    request_timeout_s: float = constants.DEFAULT_REQUEST_TIMEOUT_S
    max_header_bytes: int = constants.DEFAULT_MAX_HEADER_BYTES
    #: an idle keep-alive HTTP connection is closed after this long
    keep_alive_timeout_s: float = constants.DEFAULT_KEEP_ALIVE_TIMEOUT_S
    #: OpenTelemetry traces and OTLP metrics (off by default)
    otel: OtelSettings = field(default_factory=lambda: OtelSettings(False, constants.SERVER_SERVICE_NAME))
    #: report errors, signature failures and dead letters to this Sentry project (SENTRY_DSN)
    sentry_dsn: Secret | None = None
    #: once both ports listen, a JSON file of the pid, host, http_port and grpc_port (removed at shutdown)
    ready_file: str = ""

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.max_body_bytes + constants.GRPC_MESSAGE_OVERHEAD_BYTES

    @property
    def client_auth(self) -> bool:
        """Whether gRPC clients must present a token."""
        return bool(self.tokens_file or self.oauth_token)

    @property
    def admin_auth(self) -> bool:
        """Whether the REST read API needs the admin token: once any token is configured."""
        return self.client_auth or bool(self.admin_token or self.admin_token_file)

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name.replace('_', '-')}: {port} is not a TCP port (0-65535)")
        if self.max_body_bytes <= 0:
            raise ConfigError("max-body-size must be positive")
        if self.retention_s < 0 or self.max_event_age_s < self.retention_s:
            raise ConfigError("retention must be >= 0 and max-event-age >= retention")
        if self.max_streams_per_client < 0:
            raise ConfigError("max-streams-per-client must be 0 (no limit) or more")
        if self.request_timeout_s <= 0 or self.keep_alive_timeout_s <= 0:
            raise ConfigError("request-timeout and keep-alive-timeout must be positive")
        if self.max_header_bytes < 1024:
            raise ConfigError("max-header-size must be at least 1KiB")


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
