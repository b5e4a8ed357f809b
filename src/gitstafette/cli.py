"""The ``gitstafette`` command: thin on purpose. Parse, configure logging, build the config, run."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from gitstafette import __version__, constants
from gitstafette.config import ServerConfig, StoreConfig, Watchlist, parse_duration, parse_size
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


def main() -> None:
    app()
