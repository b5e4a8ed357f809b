"""``gitstafette server``: receive webhooks, store them, stream them to clients."""

from __future__ import annotations

import os
from typing import Annotated

from gitstafette import constants
from gitstafette.cli import common
from gitstafette.config import OtelSettings, ServerConfig, ServerTlsConfig, StoreConfig, parse_duration, parse_size
from gitstafette.exceptions import ConfigError
from gitstafette.model import Watchlist
from gitstafette.security.secret import Secret

__all__ = ["STORE_HELP", "server"]

REPOSITORIES_HELP = (
    "Repositories to accept webhooks for, comma-separated: GitHub repository ids (537845873) or owner/name, "
    "or * for every repository."
)
STORE_HELP = (
    # Every URL form short enough for one line of --help at 80 columns: click wraps a longer word mid-way.
    "Where events are kept: memory:// (lost on exit); sqlite:///relative/path.db or sqlite:////absolute/path.db; "
    "redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS), which several server replicas may share, with the "
    "options ?prefix=NAME and &lease_ttl=5s (how long a replica that died keeps the repositories it served to a "
    "client id); or with Sentinel: redis+sentinel://SENTINEL,.../MASTER/DB (port 26379 unless given; "
    "rediss+sentinel:// for TLS)."
)
RETENTION_HELP = "How long acknowledged events are kept (for inspection and replay), e.g. 30m, 24h, 7d."
MAX_AGE_HELP = "How long events that some client has not acknowledged are kept at most."
MAX_BODY_HELP = "Largest webhook body accepted; larger ones get 413 (GitHub's own cap is 25 MB)."
TLS_CERT_HELP = (
    "PEM certificate chain: both ports speak TLS with it (HTTPS and gRPC over TLS); give --tls-key too. "
    "Without it both ports are plaintext."
)
TLS_KEY_HELP = "The PEM private key of --tls-cert (unencrypted; readable by the server only)."
TLS_CLIENT_CA_HELP = (
    "Mutual TLS on the gRPC port: clients must present a certificate signed by a CA in this PEM file. "
    "The HTTP port asks for no client certificate: GitHub cannot present one."
)
TLS_RELOAD_HELP = (
    "How often the certificate files are checked for a renewal; new connections then get the new certificate, "
    "without a restart."
)


WEBHOOK_SECRET_HELP = (
    "The secret of your GitHub webhooks: X-Hub-Signature-256 is checked (HMAC-SHA256) and a webhook without "
    "a valid one gets 401. Prefer the environment variable: a command line is visible to other users."
)
WEBHOOK_SECRETS_FILE_HELP = (
    "YAML (.yaml/.yml) or TOML (.toml) file of per-repository secrets: repository id or owner/name → secret "
    "(--webhook-secret covers the others). Re-read on SIGHUP."
)
TOKENS_FILE_HELP = (
    "YAML or TOML file of client tokens: a list 'tokens' of {sha256, client_id, repositories}; sha256 is "
    "the token's hash (gitstafette hash-token). gRPC calls then need 'authorization: Bearer <token>'. "
    "The environment variable OAUTH_TOKEN adds one token for every repository. Re-read on SIGHUP."
)
ADMIN_TOKEN_FILE_HELP = (
    "File holding the admin token of the REST read API (/v1/events, /v1/dead-letters); the environment "
    "variable GITSTAFETTE_ADMIN_TOKEN may hold it instead. Needed once any token is configured. Re-read on SIGHUP."
)
MAX_STREAMS_HELP = "Open acknowledged streams one client id may hold at once (replicas count); 0 = no limit."
REQUEST_TIMEOUT_HELP = (
    "An HTTP request's headers, and then its body, must each arrive within this (else 408): a slow sender "
    "cannot hold the server."
)
MAX_HEADER_HELP = "Largest request line plus headers of an HTTP request (else 431)."
KEEP_ALIVE_HELP = "An idle keep-alive HTTP connection is closed after this long."
HEARTBEAT_HELP = (
    "A stream that carried nothing this long gets a heartbeat message: keep it below the idle timeout of every "
    "proxy and load balancer between the server and its clients (and below the clients' --idle-timeout)."
)
STATE_API_HELP = (
    "Serve the GraphQL state API at /graphql on the HTTP port: repositories, events, clients, dead letters, "
    "the audit trail. Needs a token: the admin token, or a client token (its own repositories only)."
)
STATE_API_GRAPHIQL_HELP = "With --state-api: serve the GraphiQL IDE on GET /graphql (queries still need a token)."
STATE_API_INTROSPECTION_HELP = "With --state-api: answer introspection queries (turn off in production if you like)."
READY_FILE_HELP = (
    "Once both ports listen, write this JSON file: pid, host, http_port and grpc_port (the ports bound: "
    "with port 0, the ones chosen). " + common.READY_FILE_HOW
)


def server(
    repositories: Annotated[str, common.env("REPOSITORIES", REPOSITORIES_HELP)] = "*",
    host: Annotated[str, common.env("HOST", "Address to listen on.")] = "0.0.0.0",
    http_port: Annotated[
        int, common.env("HTTP_PORT", "Port for webhooks, the REST API, health and metrics.")
    ] = constants.DEFAULT_HTTP_PORT,
    grpc_port: Annotated[int, common.env("GRPC_PORT", "Port for client streams (gRPC).")] = constants.DEFAULT_GRPC_PORT,
    store: Annotated[
        str, common.env("STORE", STORE_HELP, metavar="URL")
    ] = f"sqlite:///{constants.DEFAULT_SQLITE_PATH}",
    retention: Annotated[str, common.env("RETENTION", RETENTION_HELP)] = "24h",
    max_event_age: Annotated[str, common.env("MAX_EVENT_AGE", MAX_AGE_HELP)] = "7d",
    max_body_size: Annotated[str, common.env("MAX_BODY_SIZE", MAX_BODY_HELP)] = "25MiB",
    shutdown_grace: Annotated[
        str, common.env("SHUTDOWN_GRACE", "How long in-flight work may take on shutdown.")
    ] = "10s",
    log_level: Annotated[str, common.LOG_LEVEL_OPTION] = "info",
    log_format: Annotated[str, common.LOG_FORMAT_OPTION] = "auto",
    event_loop: Annotated[str, common.EVENT_LOOP_OPTION] = "auto",
    otel: Annotated[bool, common.OTEL_OPTION] = False,
    sentry_dsn: Annotated[str, common.SENTRY_OPTION] = "",
    tls_cert: Annotated[str, common.env("TLS_CERT", TLS_CERT_HELP)] = "",
    tls_key: Annotated[str, common.env("TLS_KEY", TLS_KEY_HELP)] = "",
    tls_client_ca: Annotated[str, common.env("TLS_CLIENT_CA", TLS_CLIENT_CA_HELP)] = "",
    tls_reload_interval: Annotated[str, common.env("TLS_RELOAD_INTERVAL", TLS_RELOAD_HELP)] = "5s",
    webhook_secret: Annotated[str, common.env("WEBHOOK_SECRET", WEBHOOK_SECRET_HELP, show_default=False)] = "",
    webhook_secrets_file: Annotated[str, common.env("WEBHOOK_SECRETS_FILE", WEBHOOK_SECRETS_FILE_HELP)] = "",
    tokens_file: Annotated[str, common.env("TOKENS_FILE", TOKENS_FILE_HELP)] = "",
    admin_token_file: Annotated[str, common.env("ADMIN_TOKEN_FILE", ADMIN_TOKEN_FILE_HELP)] = "",
    max_streams_per_client: Annotated[
        int, common.env("MAX_STREAMS_PER_CLIENT", MAX_STREAMS_HELP)
    ] = constants.DEFAULT_MAX_STREAMS_PER_CLIENT,
    request_timeout: Annotated[str, common.env("REQUEST_TIMEOUT", REQUEST_TIMEOUT_HELP)] = "30s",
    max_header_size: Annotated[str, common.env("MAX_HEADER_SIZE", MAX_HEADER_HELP)] = "64KiB",
    keep_alive_timeout: Annotated[str, common.env("KEEP_ALIVE_TIMEOUT", KEEP_ALIVE_HELP)] = "5s",
    heartbeat: Annotated[str, common.env("HEARTBEAT", HEARTBEAT_HELP)] = "15s",
    ready_file: Annotated[str, common.env("READY_FILE", READY_FILE_HELP, metavar="PATH")] = "",
    state_api: Annotated[bool, common.env("STATE_API", STATE_API_HELP)] = False,
    state_api_graphiql: Annotated[bool, common.env("STATE_API_GRAPHIQL", STATE_API_GRAPHIQL_HELP)] = False,
    state_api_introspection: Annotated[
        bool, common.env("STATE_API_INTROSPECTION", STATE_API_INTROSPECTION_HELP)
    ] = True,
) -> None:
    """Receive GitHub webhooks over HTTP, store them, and stream them to clients over gRPC."""
    # gRPC's C core writes its own line for a port it cannot bind, outside our log; the server says why itself.
    common.quiet_grpc_core("NONE")
    from gitstafette.server.server import Server

    try:
        config = ServerConfig(
            repositories=Watchlist.parse(repositories),
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            store=StoreConfig.from_url(store),
            retention_s=parse_duration(retention, "retention"),
            max_event_age_s=parse_duration(max_event_age, "max-event-age"),
            max_body_bytes=parse_size(max_body_size, "max-body-size"),
            shutdown_grace_s=parse_duration(shutdown_grace, "shutdown-grace"),
            tls=ServerTlsConfig(
                cert=tls_cert,
                key=tls_key,
                client_ca=tls_client_ca,
                reload_interval_s=parse_duration(tls_reload_interval, "tls-reload-interval"),
            ),
            webhook_secret=Secret.optional(webhook_secret),
            webhook_secrets_file=webhook_secrets_file,
            tokens_file=tokens_file,
            oauth_token=Secret.optional(os.environ.get("OAUTH_TOKEN")),
            admin_token=Secret.optional(os.environ.get("GITSTAFETTE_ADMIN_TOKEN")),
            admin_token_file=admin_token_file,
            max_streams_per_client=max_streams_per_client,
            request_timeout_s=parse_duration(request_timeout, "request-timeout"),
            max_header_bytes=parse_size(max_header_size, "max-header-size"),
            keep_alive_timeout_s=parse_duration(keep_alive_timeout, "keep-alive-timeout"),
            heartbeat_s=parse_duration(heartbeat, "heartbeat"),
            otel=OtelSettings.from_env(otel, constants.SERVER_SERVICE_NAME),
            sentry_dsn=Secret.optional(sentry_dsn),
            ready_file=ready_file,
            state_api=state_api,
            state_api_graphiql=state_api_graphiql,
            state_api_introspection=state_api_introspection,
        )
    except ConfigError as exc:
        raise common.fail(exc) from exc
    common.configure_logging(log_level, log_format)
    common.serve("server", lambda: Server(config), event_loop, lambda process: process.unfinished_steps)
