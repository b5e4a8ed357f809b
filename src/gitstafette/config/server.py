"""What ``gitstafette server`` runs with: :class:`ServerConfig` and its certificate files, :class:`ServerTlsConfig`."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from gitstafette import constants
from gitstafette.config.otel import OtelSettings
from gitstafette.config.store import StoreConfig
from gitstafette.exceptions import ConfigError
from gitstafette.model import Watchlist
from gitstafette.security.secret import Secret

__all__ = ["ServerConfig", "ServerTlsConfig"]


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
    #: the GraphQL state API at /graphql (gitstafette.state): off unless asked for; its in-browser IDE, and
    #: whether it answers introspection queries
    state_api: bool = False
    state_api_graphiql: bool = False
    state_api_introspection: bool = True

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
        if self.heartbeat_s <= 0:
            raise ConfigError("heartbeat must be positive")
        if self.max_header_bytes < 1024:
            raise ConfigError("max-header-size must be at least 1KiB")
