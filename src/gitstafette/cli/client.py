"""``gitstafette client``: stream events from a server and deliver them to a target."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from gitstafette import constants
from gitstafette.cli import common
from gitstafette.config import ClientConfig, ClientTlsConfig, OtelSettings, parse_duration
from gitstafette.exceptions import ConfigError
from gitstafette.security.secret import Secret

__all__ = ["client"]

CLIENT_READY_FILE_HELP = (
    "Once the health port listens, write this JSON file: pid, health_host and health_port (the port bound: "
    "with port 0, the one chosen). " + common.READY_FILE_HOW
)
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


def client(
    repositories: Annotated[str, common.env("REPOSITORIES", CLIENT_REPOSITORIES_HELP)],
    target: Annotated[str, common.env("TARGET", TARGET_HELP, metavar="URL")],
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
    target_health_url: Annotated[str, common.env("TARGET_HEALTH_URL", TARGET_HEALTH_HELP)] = "",
    client_id: Annotated[str, common.env("CLIENT_ID", CLIENT_ID_HELP, show_default="the host name")] = "",
    insecure: Annotated[bool, typer.Option("--insecure", envvar="GITSTAFETTE_INSECURE", help=INSECURE_HELP)] = False,
    tls_ca: Annotated[str, common.env("TLS_CA", CLIENT_TLS_CA_HELP)] = "",
    tls_cert: Annotated[str, common.env("TLS_CERT", CLIENT_TLS_CERT_HELP)] = "",
    tls_key: Annotated[str, common.env("TLS_KEY", CLIENT_TLS_KEY_HELP)] = "",
    tls_server_name: Annotated[str, common.env("TLS_SERVER_NAME", TLS_SERVER_NAME_HELP)] = "",
    health_host: Annotated[str, common.env("HEALTH_HOST", "Address for the health port.")] = "0.0.0.0",
    health_port: Annotated[int, common.env("HEALTH_PORT", HEALTH_PORT_HELP)] = constants.DEFAULT_CLIENT_HEALTH_PORT,
    max_delivery_age: Annotated[str, common.env("MAX_DELIVERY_AGE", MAX_DELIVERY_AGE_HELP)] = "1h",
    delivery_timeout: Annotated[str, common.env("DELIVERY_TIMEOUT", "How long one delivery attempt may take.")] = "30s",
    retry_max_delay: Annotated[str, common.env("RETRY_MAX_DELAY", "Longest wait between delivery attempts.")] = "30s",
    reconnect_max_delay: Annotated[
        str,
        common.env("RECONNECT_MAX_DELAY", "Longest wait between attempts to reconnect."),
    ] = "30s",
    idle_timeout: Annotated[
        str,
        common.env(
            "IDLE_TIMEOUT",
            "Reconnect when the stream carried nothing (no event, no heartbeat) this long.",
        ),
    ] = "45s",
    shutdown_grace: Annotated[
        str,
        common.env("SHUTDOWN_GRACE", "How long a delivery under way may take on shutdown."),
    ] = "10s",
    refused_retry_delay: Annotated[
        # Hidden: the tests shorten it; in use, a refusal lasts until someone changes a token.
        str, common.env("REFUSED_RETRY_DELAY", None, hidden=True)
    ] = "60s",
    log_level: Annotated[str, common.LOG_LEVEL_OPTION] = "info",
    log_format: Annotated[str, common.LOG_FORMAT_OPTION] = "auto",
    event_loop: Annotated[str, common.EVENT_LOOP_OPTION] = "auto",
    otel: Annotated[bool, common.OTEL_OPTION] = False,
    sentry_dsn: Annotated[str, common.SENTRY_OPTION] = "",
    token: Annotated[
        str,
        typer.Option(envvar=["GITSTAFETTE_TOKEN", "OAUTH_TOKEN"], help=CLIENT_TOKEN_HELP, show_default=False),
    ] = "",
    webhook_secret: Annotated[str, common.env("WEBHOOK_SECRET", CLIENT_WEBHOOK_SECRET_HELP, show_default=False)] = "",
    webhook_secrets_file: Annotated[str, common.env("WEBHOOK_SECRETS_FILE", CLIENT_WEBHOOK_SECRETS_FILE_HELP)] = "",
    target_token: Annotated[str, common.env("TARGET_TOKEN", TARGET_TOKEN_HELP, show_default=False)] = "",
    ready_file: Annotated[str, common.env("READY_FILE", CLIENT_READY_FILE_HELP, metavar="PATH")] = "",
) -> None:
    """Stream events from a gitstafette server over gRPC and deliver each one to the target, acknowledged."""
    # gRPC's C core logs each failed connection attempt itself; the client logs a change of state once.
    common.quiet_grpc_core("ERROR")
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
        raise common.fail(exc) from exc
    common.configure_logging(log_level, log_format)
    if common.serve("client", lambda: Client(config), event_loop).failed:
        raise typer.Exit(1)
