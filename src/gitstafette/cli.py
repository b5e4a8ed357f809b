"""The ``gitstafette`` command: thin on purpose. Parse, configure logging, build the config, run."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gitstafette import __version__, constants
from gitstafette.config import ClientConfig, ServerConfig, StoreConfig, Watchlist, parse_duration, parse_size
from gitstafette.events_cli import events_app
from gitstafette.exceptions import ConfigError
from gitstafette.logs import configure_logging

__all__ = ["app", "main"]

app = typer.Typer(
    name="gitstafette",
    help="Relay GitHub webhooks into a private network: a public server receives and stores them, "
    "a client inside the network streams them over gRPC and delivers them to its target.",
    no_args_is_help=True,
    add_completion=False,
)

REPOSITORIES_HELP = (
    "Repositories to accept webhooks for, comma-separated: GitHub repository ids (537845873) or owner/name, "
    "or * for every repository."
)
STORE_HELP = (
    "Where events are kept: memory:// (lost on exit), sqlite:///relative/path.db or sqlite:////absolute/path.db."
)
RETENTION_HELP = "How long acknowledged events are kept (for inspection and replay), e.g. 30m, 24h, 7d."
MAX_AGE_HELP = "How long events that some client has not acknowledged are kept at most."
MAX_BODY_HELP = "Largest webhook body accepted; larger ones get 413 (GitHub's own cap is 25 MB)."
LOG_LEVEL_HELP = "debug, info, warning or error."


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


@app.command()
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
        str, typer.Option(envvar="GITSTAFETTE_STORE", help=STORE_HELP)
    ] = f"sqlite:///{constants.DEFAULT_SQLITE_PATH}",
    retention: Annotated[str, typer.Option(envvar="GITSTAFETTE_RETENTION", help=RETENTION_HELP)] = "24h",
    max_event_age: Annotated[str, typer.Option(envvar="GITSTAFETTE_MAX_EVENT_AGE", help=MAX_AGE_HELP)] = "7d",
    max_body_size: Annotated[str, typer.Option(envvar="GITSTAFETTE_MAX_BODY_SIZE", help=MAX_BODY_HELP)] = "25MiB",
    shutdown_grace: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_SHUTDOWN_GRACE", help="How long in-flight work may take on shutdown.")
    ] = "10s",
    log_level: Annotated[str, typer.Option(envvar="GITSTAFETTE_LOG_LEVEL", help=LOG_LEVEL_HELP)] = "info",
) -> None:
    """Receive GitHub webhooks over HTTP, store them, and stream them to clients over gRPC."""
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
        )
    except ConfigError as exc:
        raise _fail(exc) from exc
    configure_logging(log_level)
    try:
        asyncio.run(Server(config).serve())
    except OSError as exc:
        typer.echo(f"gitstafette: cannot start the server: {exc}", err=True)
        raise typer.Exit(1) from exc


CLIENT_SERVER_HELP = (
    "gitstafette server(s) as HOST:PORT; give the option several times or comma-separated, tried in turn "
    f"when (re)connecting (default: 127.0.0.1:{constants.DEFAULT_GRPC_PORT})."
)
CLIENT_REPOSITORIES_HELP = "Repositories to receive events for, comma-separated: GitHub repository ids or owner/name."
CLIENT_ID_HELP = (
    "Who this client is (default: the host name). Clients with different ids each get every event; "
    "replicas with the same id share the repositories between them."
)
TARGET_HELP = (
    "Where events go: http(s)://host/path (a POST each, with GitHub's body and headers) or grpc://host:port "
    "(another gitstafette server, through WebhookEventPush)."
)
TARGET_HEALTH_HELP = "A URL on the target answering 2xx while it is healthy; delivery pauses while it does not."
INSECURE_HELP = "Plaintext gRPC to the server (without it: TLS, trusting the system's roots)."
HEALTH_PORT_HELP = "Port for /health, /ready and /metrics (Prometheus); 0 picks a free one (it is logged)."
MAX_DELIVERY_AGE_HELP = (
    "How long one event is retried (from its first attempt) before it is dead-lettered, e.g. 10m, 1h."
)


@app.command()
def client(
    repositories: Annotated[str, typer.Option(envvar="GITSTAFETTE_REPOSITORIES", help=CLIENT_REPOSITORIES_HELP)],
    target: Annotated[str, typer.Option(envvar="GITSTAFETTE_TARGET", help=TARGET_HELP)],
    server: Annotated[
        list[str] | None, typer.Option("--server", envvar="GITSTAFETTE_SERVER", help=CLIENT_SERVER_HELP)
    ] = None,
    target_health_url: Annotated[
        str, typer.Option(envvar="GITSTAFETTE_TARGET_HEALTH_URL", help=TARGET_HEALTH_HELP)
    ] = "",
    client_id: Annotated[str, typer.Option(envvar="GITSTAFETTE_CLIENT_ID", help=CLIENT_ID_HELP)] = "",
    insecure: Annotated[bool, typer.Option("--insecure", envvar="GITSTAFETTE_INSECURE", help=INSECURE_HELP)] = False,
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
    log_level: Annotated[str, typer.Option(envvar="GITSTAFETTE_LOG_LEVEL", help=LOG_LEVEL_HELP)] = "info",
) -> None:
    """Stream events from a gitstafette server over gRPC and deliver each one to the target, acknowledged."""
    # gRPC's C core logs each failed connection attempt itself; the client logs a change of state once.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
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
        )
    except ConfigError as exc:
        raise _fail(exc) from exc
    configure_logging(log_level)
    runner = Client(config)
    try:
        asyncio.run(runner.serve())
    except OSError as exc:
        typer.echo(f"gitstafette: cannot start the client: {exc}", err=True)
        raise typer.Exit(1) from exc
    if runner.failed:
        raise typer.Exit(1)


@app.command("send-webhook")
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


@app.command()
def demo(
    payload: Annotated[
        Path | None, typer.Option(help="A webhook payload file to send instead of the built-in push event.")
    ] = None,
    event: Annotated[str, typer.Option(help="The X-GitHub-Event of the payload.")] = "push",
    log_level: Annotated[str, typer.Option(envvar="GITSTAFETTE_LOG_LEVEL", help=LOG_LEVEL_HELP)] = "warning",
) -> None:
    """Relay one webhook through a server, a client and a target on free local ports, and show what arrived."""
    from gitstafette.demo import builtin_payload, run_demo

    configure_logging(log_level)
    body = payload.read_bytes() if payload is not None else builtin_payload()
    try:
        report = asyncio.run(run_demo(body, event, typer.echo))
    except (ValueError, TimeoutError, OSError) as exc:
        typer.echo(f"gitstafette demo: {exc}", err=True)
        raise typer.Exit(1) from exc
    if report.received_body != body:
        raise typer.Exit(1)


app.add_typer(events_app)


def main() -> None:
    app()
