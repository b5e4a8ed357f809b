"""The ``gitstafette`` command: thin on purpose. Parse, configure logging, build the config, run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from gitstafette import __version__, constants
from gitstafette._runtime import event_loop_factory
from gitstafette.config import (
    ClientConfig,
    ClientTlsConfig,
    OtelSettings,
    ServerConfig,
    ServerTlsConfig,
    StoreConfig,
    parse_duration,
    parse_size,
)
from gitstafette.events_cli import events_app
from gitstafette.exceptions import ConfigError, StoreError
from gitstafette.logs import configure_logging
from gitstafette.model import Watchlist
from gitstafette.security.secret import Secret

__all__ = ["app", "main"]

app = typer.Typer(
    name="gitstafette",
    help="Relay GitHub webhooks into a private network: a public server receives and stores them, "
    "a client inside the network streams them over gRPC and delivers them to its target.",
    no_args_is_help=True,
    add_completion=False,
    # Click's own help, not rich's panels: at 80 columns rich's table cuts store URLs and environment
    # variable names with "…" and shows a flag as "<bool>"; click's wraps every word and marks flags as such.
    rich_markup_mode=None,
)

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
LOG_LEVEL_HELP = "debug, info, warning or error."
LOG_FORMAT_HELP = (
    "json (one JSON object a line: timestamp, level, logger, event, and delivery_id / trace_id on lines about "
    "a webhook), console (readable, for a terminal) or auto: console on a terminal, json otherwise."
)
LOG_FORMAT_OPTION = typer.Option(envvar="GITSTAFETTE_LOG_FORMAT", help=LOG_FORMAT_HELP)
EVENT_LOOP_HELP = (
    "auto (uvloop when it is installed, as it is with gitstafette; else asyncio's own), uvloop or asyncio, "
    "the fallback should uvloop misbehave."
)
EVENT_LOOP_OPTION = typer.Option(envvar="GITSTAFETTE_EVENT_LOOP", help=EVENT_LOOP_HELP)
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
OTEL_HELP = (
    "Export OpenTelemetry traces (one per webhook, server and client spans linked) and the metrics over OTLP. "
    "Where to: the standard OTEL_EXPORTER_OTLP_* variables, or the original's OTEL_HOSTNAME, OTEL_PORT (4317), "
    "OTEL_PROTOCOL (grpc or http); OTEL_SERVICE_NAME; OTEL_TRACE_SAMPLING_RATE (0 to 1) or OTEL_TRACES_SAMPLER. "
    "The standard variables win when both are set."
)
SENTRY_DSN_HELP = (
    "Report unexpected errors, signature failures and dead letters to this Sentry project (never a payload, "
    "header or secret). Prefer the environment variable SENTRY_DSN."
)
# The end of both ready-file helps: why a file, and how it is written.
_READY_FILE_HOW = (
    "Written whole (a temporary file renamed into place), so programs can wait for it instead of reading "
    "the log; removed on shutdown."
)
READY_FILE_HELP = (
    "Once both ports listen, write this JSON file: pid, host, http_port and grpc_port (the ports bound: "
    "with port 0, the ones chosen). " + _READY_FILE_HOW
)
CLIENT_READY_FILE_HELP = (
    "Once the health port listens, write this JSON file: pid, health_host and health_port (the port bound: "
    "with port 0, the one chosen). " + _READY_FILE_HOW
)
SENTRY_OPTION = typer.Option(envvar=["GITSTAFETTE_SENTRY_DSN", "SENTRY_DSN"], help=SENTRY_DSN_HELP, show_default=False)
OTEL_OPTION = typer.Option("--otel/--no-otel", envvar=["GITSTAFETTE_OTEL_ENABLED", "OTEL_ENABLED"], help=OTEL_HELP)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gitstafette {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """gitstafette: a Git webhook relay."""


def _fail(error: ConfigError) -> typer.Exit:
    typer.echo(f"gitstafette: {error}", err=True)
    return typer.Exit(2)


def _run(main: Coroutine[Any, Any, None], event_loop: str, left_behind: Callable[[], list[str]] = list) -> None:
    """Run ``main`` on the event loop ``--event-loop`` names (asyncio.Runner's documented loop_factory).

    When ``left_behind()`` names shutdown steps that ran out of time, the process exits at once (code 1,
    see :func:`_exit_now`) instead of closing the loop: closing it waits, without a bound, for every task
    left (one that ignores its cancellation) and for the executor's threads (one stuck in a driver).
    """
    try:
        factory = event_loop_factory(event_loop)
    except ConfigError as exc:
        main.close()
        raise _fail(exc) from exc
    runner = asyncio.Runner(loop_factory=factory)
    try:
        runner.run(main)
    except BaseException as exc:
        if left_behind():
            _exit_now(exc)
        raise
    else:
        if left_behind():
            _exit_now(None)
    finally:
        runner.close()


def _exit_now(error: BaseException | None) -> NoReturn:
    """End the process now, with exit code 1: the log has said which shutdown step ran out of time and what
    it left undone. The logs and the standard streams are flushed first; nothing else is waited for."""
    if isinstance(error, OSError | StoreError | ConfigError):
        typer.echo(f"gitstafette: {_reason(error)}", err=True)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(1)


def _reason(error: Exception) -> str:
    """The message of ``error`` without the ``[Errno 98]`` that str() of an OSError starts with."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return error.strerror
    return str(error)


def _quiet_grpc_core(verbosity: str) -> None:
    """Set gRPC's C-core log level (its documented GRPC_VERBOSITY: DEBUG, INFO, ERROR or NONE) unless the
    environment sets it already. It is read once, when grpc is imported, so this runs in the command before
    the first import of grpc; the library modules leave the environment alone."""
    os.environ.setdefault("GRPC_VERBOSITY", verbosity)


def _configure_logging(level: str, log_format: str = "auto") -> None:
    try:
        configure_logging(level, log_format)
    except ConfigError as exc:
        raise _fail(exc) from exc


@app.command(short_help="Receive webhooks, store them and stream them to clients.")
def server(
    repositories: Annotated[str, typer.Option(envvar="GITSTAFETTE_REPOSITORIES", help=REPOSITORIES_HELP)] = "*",
    host: Annotated[str, typer.Option(envvar="GITSTAFETTE_HOST", help="Address to listen on.")] = "0.0.0.0",
    http_port: Annotated[
        int, typer.Option(envvar="GITSTAFETTE_HTTP_PORT", help="Port for webhooks, the REST API, health and metrics.")
    ] = constants.DEFAULT_HTTP_PORT,
    grpc_port: Annotated[
        int, typer.Option(envvar="GITSTAFETTE_GRPC_PORT", help="Port for client streams (gRPC).")
    ] = constants.DEFAULT_GRPC_PORT,
    store: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_STORE", help=STORE_HELP, metavar="URL")
    ] = f"sqlite:///{constants.DEFAULT_SQLITE_PATH}",
    retention: Annotated[str, typer.Option(envvar="GITSTAFETTE_RETENTION", help=RETENTION_HELP)] = "24h",
    max_event_age: Annotated[str, typer.Option(envvar="GITSTAFETTE_MAX_EVENT_AGE", help=MAX_AGE_HELP)] = "7d",
    max_body_size: Annotated[str, typer.Option(envvar="GITSTAFETTE_MAX_BODY_SIZE", help=MAX_BODY_HELP)] = "25MiB",
    shutdown_grace: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_SHUTDOWN_GRACE", help="How long in-flight work may take on shutdown.")
    ] = "10s",
    log_level: Annotated[str, typer.Option(envvar="GITSTAFETTE_LOG_LEVEL", help=LOG_LEVEL_HELP)] = "info",
    log_format: Annotated[str, LOG_FORMAT_OPTION] = "auto",
    event_loop: Annotated[str, EVENT_LOOP_OPTION] = "auto",
    otel: Annotated[bool, OTEL_OPTION] = False,
    sentry_dsn: Annotated[str, SENTRY_OPTION] = "",
    tls_cert: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_CERT", help=TLS_CERT_HELP)] = "",
    tls_key: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_KEY", help=TLS_KEY_HELP)] = "",
    tls_client_ca: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_CLIENT_CA", help=TLS_CLIENT_CA_HELP)] = "",
    tls_reload_interval: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_TLS_RELOAD_INTERVAL", help=TLS_RELOAD_HELP)
    ] = "5s",
    webhook_secret: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_WEBHOOK_SECRET", help=WEBHOOK_SECRET_HELP, show_default=False)
    ] = "",
    webhook_secrets_file: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_WEBHOOK_SECRETS_FILE", help=WEBHOOK_SECRETS_FILE_HELP)
    ] = "",
    tokens_file: Annotated[str, typer.Option(envvar="GITSTAFETTE_TOKENS_FILE", help=TOKENS_FILE_HELP)] = "",
    admin_token_file: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_ADMIN_TOKEN_FILE", help=ADMIN_TOKEN_FILE_HELP)
    ] = "",
    max_streams_per_client: Annotated[
        int, typer.Option(envvar="GITSTAFETTE_MAX_STREAMS_PER_CLIENT", help=MAX_STREAMS_HELP)
    ] = constants.DEFAULT_MAX_STREAMS_PER_CLIENT,
    request_timeout: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_REQUEST_TIMEOUT", help=REQUEST_TIMEOUT_HELP)
    ] = "30s",
    max_header_size: Annotated[str, typer.Option(envvar="GITSTAFETTE_MAX_HEADER_SIZE", help=MAX_HEADER_HELP)] = "64KiB",
    keep_alive_timeout: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_KEEP_ALIVE_TIMEOUT", help=KEEP_ALIVE_HELP)
    ] = "5s",
    ready_file: Annotated[
        str,
        typer.Option(
            envvar="GITSTAFETTE_READY_FILE",
            metavar="PATH",
            help=READY_FILE_HELP,
        ),
    ] = "",
) -> None:
    """Receive GitHub webhooks over HTTP, store them, and stream them to clients over gRPC."""
    # gRPC's C core writes its own line for a port it cannot bind, outside our log; the server says why itself.
    _quiet_grpc_core("NONE")
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
            otel=OtelSettings.from_env(otel, constants.SERVER_SERVICE_NAME),
            sentry_dsn=Secret.optional(sentry_dsn),
            ready_file=ready_file,
        )
    except ConfigError as exc:
        raise _fail(exc) from exc
    _configure_logging(log_level, log_format)
    try:
        process = Server(config)
        _run(process.serve(), event_loop, lambda: process.unfinished_steps)
    except ConfigError as exc:  # certificate files that cannot be used
        raise _fail(exc) from exc
    except (OSError, StoreError) as exc:  # a port that cannot be bound, a store that cannot be opened
        typer.echo(f"gitstafette: cannot start the server: {_reason(exc)}", err=True)
        raise typer.Exit(1) from exc


CLIENT_SERVER_HELP = (
    "gitstafette server(s) as HOST:PORT; give the option several times or comma-separated, tried in turn "
    "when (re)connecting."
)
CLIENT_REPOSITORIES_HELP = "Repositories to receive events for, comma-separated: GitHub repository ids or owner/name."
CLIENT_ID_HELP = (
    "Who this client is. Clients with different ids each get every event; "
    "replicas with the same id share the repositories between them."
)
TARGET_HELP = (
    "Where events go: http(s)://host/path (a POST each, with GitHub's body and headers) or grpc://host:port "
    "(another gitstafette server, through WebhookEventPush)."
)
TARGET_HEALTH_HELP = "A URL on the target answering 2xx while it is healthy; delivery pauses while it does not."
INSECURE_HELP = (
    "Plaintext gRPC to the server: the only way to turn TLS off (logged as a warning). "
    "Without it: TLS, trusting the system's roots or --tls-ca."
)
CLIENT_TLS_CA_HELP = "PEM CA certificate(s) the server's certificate must chain to (default: the system's roots)."
CLIENT_TLS_CERT_HELP = "PEM client certificate, for a server that asks for one (mutual TLS); give --tls-key too."
CLIENT_TLS_KEY_HELP = "The PEM private key of --tls-cert (unencrypted)."
TLS_SERVER_NAME_HELP = (
    "Check the server's certificate for this name instead of the host in --server (rarely needed: "
    "certificates from `gitstafette certs` carry IP addresses too)."
)
CLIENT_TOKEN_HELP = (
    "The token this client presents to the server (authorization: Bearer TOKEN, on every call); "
    "OAUTH_TOKEN works too. Prefer the environment: a command line is visible to other users."
)
CLIENT_WEBHOOK_SECRET_HELP = (
    "GitHub's webhook secret: each event's X-Hub-Signature-256 is checked again on the raw bytes before "
    "delivery; one that fails is never delivered and is reported to the server as a dead letter."
)
CLIENT_WEBHOOK_SECRETS_FILE_HELP = (
    "Per-repository webhook secrets, the same YAML or TOML file as the server's (repository id or owner/name → secret)."
)
TARGET_TOKEN_HELP = "For a grpc:// target: the token the downstream gitstafette server gave this client."
HEALTH_PORT_HELP = "Port for /health, /ready and /metrics (Prometheus); 0 picks a free one (it is logged)."
MAX_DELIVERY_AGE_HELP = (
    "How long one event is retried (from its first attempt) before it is dead-lettered, e.g. 10m, 1h."
)


@app.command(short_help="Stream events from a server and deliver them to a target.")
def client(
    repositories: Annotated[str, typer.Option(envvar="GITSTAFETTE_REPOSITORIES", help=CLIENT_REPOSITORIES_HELP)],
    target: Annotated[str, typer.Option(envvar="GITSTAFETTE_TARGET", help=TARGET_HELP, metavar="URL")],
    server: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            envvar="GITSTAFETTE_SERVER",
            help=CLIENT_SERVER_HELP,
            metavar="HOST:PORT",
            show_default=f"127.0.0.1:{constants.DEFAULT_GRPC_PORT}",
        ),
    ] = None,
    target_health_url: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_TARGET_HEALTH_URL", help=TARGET_HEALTH_HELP)
    ] = "",
    client_id: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_CLIENT_ID", help=CLIENT_ID_HELP, show_default="the host name")
    ] = "",
    insecure: Annotated[bool, typer.Option("--insecure", envvar="GITSTAFETTE_INSECURE", help=INSECURE_HELP)] = False,
    tls_ca: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_CA", help=CLIENT_TLS_CA_HELP)] = "",
    tls_cert: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_CERT", help=CLIENT_TLS_CERT_HELP)] = "",
    tls_key: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_KEY", help=CLIENT_TLS_KEY_HELP)] = "",
    tls_server_name: Annotated[str, typer.Option(envvar="GITSTAFETTE_TLS_SERVER_NAME", help=TLS_SERVER_NAME_HELP)] = "",
    health_host: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_HEALTH_HOST", help="Address for the health port.")
    ] = "0.0.0.0",
    health_port: Annotated[
        int, typer.Option(envvar="GITSTAFETTE_HEALTH_PORT", help=HEALTH_PORT_HELP)
    ] = constants.DEFAULT_CLIENT_HEALTH_PORT,
    max_delivery_age: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_MAX_DELIVERY_AGE", help=MAX_DELIVERY_AGE_HELP)
    ] = "1h",
    delivery_timeout: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_DELIVERY_TIMEOUT", help="How long one delivery attempt may take.")
    ] = "30s",
    retry_max_delay: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_RETRY_MAX_DELAY", help="Longest wait between delivery attempts.")
    ] = "30s",
    reconnect_max_delay: Annotated[
        str,
        typer.Option(envvar="GITSTAFETTE_RECONNECT_MAX_DELAY", help="Longest wait between attempts to reconnect."),
    ] = "30s",
    idle_timeout: Annotated[
        str,
        typer.Option(
            envvar="GITSTAFETTE_IDLE_TIMEOUT",
            help="Reconnect when the stream carried nothing (no event, no heartbeat) this long.",
        ),
    ] = "45s",
    shutdown_grace: Annotated[
        str,
        typer.Option(envvar="GITSTAFETTE_SHUTDOWN_GRACE", help="How long a delivery under way may take on shutdown."),
    ] = "10s",
    refused_retry_delay: Annotated[
        # Hidden: the tests shorten it; in use, a refusal lasts until someone changes a token.
        str, typer.Option(envvar="GITSTAFETTE_REFUSED_RETRY_DELAY", hidden=True)
    ] = "60s",
    log_level: Annotated[str, typer.Option(envvar="GITSTAFETTE_LOG_LEVEL", help=LOG_LEVEL_HELP)] = "info",
    log_format: Annotated[str, LOG_FORMAT_OPTION] = "auto",
    event_loop: Annotated[str, EVENT_LOOP_OPTION] = "auto",
    otel: Annotated[bool, OTEL_OPTION] = False,
    sentry_dsn: Annotated[str, SENTRY_OPTION] = "",
    token: Annotated[
        str,
        typer.Option(envvar=["GITSTAFETTE_TOKEN", "OAUTH_TOKEN"], help=CLIENT_TOKEN_HELP, show_default=False),
    ] = "",
    webhook_secret: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_WEBHOOK_SECRET", help=CLIENT_WEBHOOK_SECRET_HELP, show_default=False)
    ] = "",
    webhook_secrets_file: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_WEBHOOK_SECRETS_FILE", help=CLIENT_WEBHOOK_SECRETS_FILE_HELP)
    ] = "",
    target_token: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_TARGET_TOKEN", help=TARGET_TOKEN_HELP, show_default=False)
    ] = "",
    ready_file: Annotated[
        str,
        typer.Option(
            envvar="GITSTAFETTE_READY_FILE",
            metavar="PATH",
            help=CLIENT_READY_FILE_HELP,
        ),
    ] = "",
) -> None:
    """Stream events from a gitstafette server over gRPC and deliver each one to the target, acknowledged."""
    # gRPC's C core logs each failed connection attempt itself; the client logs a change of state once.
    _quiet_grpc_core("ERROR")
    from gitstafette.client import Client

    try:
        retry_max_delay_s = parse_duration(retry_max_delay, "retry-max-delay")
        reconnect_max_delay_s = parse_duration(reconnect_max_delay, "reconnect-max-delay")
        config = ClientConfig(
            repositories=ClientConfig.split(repositories),
            target=target,
            servers=ClientConfig.split(server or []) or ClientConfig.servers,
            client_id=client_id or socket.gethostname(),
            insecure=insecure,
            tls=ClientTlsConfig(ca=tls_ca, cert=tls_cert, key=tls_key, server_name=tls_server_name),
            target_health_url=target_health_url,
            health_host=health_host,
            health_port=health_port,
            max_delivery_age_s=parse_duration(max_delivery_age, "max-delivery-age"),
            delivery_timeout_s=parse_duration(delivery_timeout, "delivery-timeout"),
            retry_initial_delay_s=min(ClientConfig.retry_initial_delay_s, retry_max_delay_s),
            retry_max_delay_s=retry_max_delay_s,
            reconnect_initial_delay_s=min(ClientConfig.reconnect_initial_delay_s, reconnect_max_delay_s),
            reconnect_max_delay_s=reconnect_max_delay_s,
            idle_timeout_s=parse_duration(idle_timeout, "idle-timeout"),
            shutdown_grace_s=parse_duration(shutdown_grace, "shutdown-grace"),
            refused_retry_delay_s=parse_duration(refused_retry_delay, "refused-retry-delay"),
            token=Secret.optional(token),
            webhook_secret=Secret.optional(webhook_secret),
            webhook_secrets_file=webhook_secrets_file,
            target_token=Secret.optional(target_token),
            otel=OtelSettings.from_env(otel, constants.CLIENT_SERVICE_NAME),
            sentry_dsn=Secret.optional(sentry_dsn),
            ready_file=ready_file,
        )
    except ConfigError as exc:
        raise _fail(exc) from exc
    _configure_logging(log_level, log_format)
    runner = Client(config)
    try:
        _run(runner.serve(), event_loop)
    except ConfigError as exc:  # TLS files that cannot be used
        raise _fail(exc) from exc
    except OSError as exc:
        typer.echo(f"gitstafette: cannot start the client: {_reason(exc)}", err=True)
        raise typer.Exit(1) from exc
    if runner.failed:
        raise typer.Exit(1)


@app.command("send-webhook", short_help="Post a webhook payload file the way GitHub does.")
def send_webhook(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A webhook payload (JSON).")],
    url: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_WEBHOOK_URL", help="The server's webhook endpoint.")
    ] = f"http://127.0.0.1:{constants.DEFAULT_HTTP_PORT}/v1/github/",
    event: Annotated[
        str, typer.Option(help="X-GitHub-Event (default: the file name up to its first dot, e.g. push.0.json → push).")
    ] = "",
    secret: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_WEBHOOK_SECRET", help="Sign the body (X-Hub-Signature-256) with it.")
    ] = "",
    repository_id: Annotated[
        str, typer.Option(help="X-GitHub-Hook-Installation-Target-ID (default: repository.id of the payload).")
    ] = "",
) -> None:
    """Post a webhook payload file the way GitHub does, and print the answer."""
    from gitstafette.client.webhook_sender import send_webhook as post

    try:
        headers, response = post(file, url, event=event, secret=secret, repository_id=repository_id)
    except httpx.HTTPError as exc:
        typer.echo(f"gitstafette: cannot post to {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{response.status_code} {response.reason_phrase} (delivery {headers['X-GitHub-Delivery']})")
    if response.text:
        typer.echo(response.text)
    if not response.is_success:
        raise typer.Exit(1)


@app.command("hash-token", short_help="Print the SHA-256 of a client token, for a tokens file.")
def hash_token() -> None:
    """Print the SHA-256 of a client token read from standard input, for the sha256 of a tokens file entry.

    echo -n "$TOKEN" | gitstafette hash-token   (or run it and type the token; it is not echoed).
    Make a token with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
    """
    from gitstafette.server.auth import hash_token as sha256_of

    if sys.stdin.isatty():
        text = typer.prompt("token", hide_input=True, err=True)
    else:
        text = sys.stdin.read()
    token = text.strip()
    if not token:
        typer.echo("gitstafette: no token on standard input", err=True)
        raise typer.Exit(2)
    typer.echo(sha256_of(token))


@app.command(short_help="Relay two webhooks through a local server, client and target.")
def demo(
    payload: Annotated[
        Path | None, typer.Option(help="A webhook payload file to send instead of the built-in push event.")
    ] = None,
    event: Annotated[str, typer.Option(help="The X-GitHub-Event of the payload.")] = "push",
    log_level: Annotated[str, typer.Option(envvar="GITSTAFETTE_LOG_LEVEL", help=LOG_LEVEL_HELP)] = "warning",
) -> None:
    """Relay two webhooks through a server, a client and a target on free local ports (the second shows the
    relay warm), and show what arrived."""
    from gitstafette.demo import builtin_payload, run_demo

    _configure_logging(log_level)
    body = payload.read_bytes() if payload is not None else builtin_payload()
    try:
        report = asyncio.run(run_demo(body, event, typer.echo))
    except (ValueError, TimeoutError, OSError) as exc:
        typer.echo(f"gitstafette demo: {exc}", err=True)
        raise typer.Exit(1) from exc
    if report.received_body != body:
        raise typer.Exit(1)


CERTS_SERVER_NAME_HELP = (
    "A name the server is reached by: a DNS name or an IP address (an IP SAN); repeat for several. "
    "Default: localhost, 127.0.0.1 and ::1."
)
CERTS_CLIENT_NAME_HELP = "A client to issue a certificate for (client-NAME.pem); repeat for several. Default: client."


@app.command(short_help="Create a development CA and certificates for (mutual) TLS.")
def certs(
    out: Annotated[Path, typer.Option(help="Folder to write into (created when missing).")] = Path("certs"),
    server_name: Annotated[list[str] | None, typer.Option("--server-name", help=CERTS_SERVER_NAME_HELP)] = None,
    client_name: Annotated[list[str] | None, typer.Option("--client-name", help=CERTS_CLIENT_NAME_HELP)] = None,
    days: Annotated[
        int, typer.Option(help="How long the server and client certificates are valid, in days (the CA: 10 years).")
    ] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace certificates already in the folder.")] = False,
) -> None:
    """Create a development CA, a server certificate and client certificates, for trying (mutual) TLS.

    Files: ca.pem, ca-key.pem, server.pem, server-key.pem, and client-NAME.pem with client-NAME-key.pem.

    Keys are mode 0600. For production, use certificates from your own CA or a public one.
    """
    from gitstafette.security.certs import instructions, write_dev_certificates

    server_names = ClientConfig.split(server_name or []) or ("localhost", "127.0.0.1", "::1")
    client_names = ClientConfig.split(client_name or []) or ("client",)
    try:
        written = write_dev_certificates(out, server_names, client_names, valid_days=days, force=force)
    except ConfigError as exc:
        raise _fail(exc) from exc
    except OSError as exc:
        typer.echo(f"gitstafette: cannot write into {out}: {exc}", err=True)
        raise typer.Exit(1) from exc
    for line in instructions(written, server_names):
        typer.echo(line)


app.add_typer(events_app)


def main() -> None:
    app()
