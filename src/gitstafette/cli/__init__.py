"""The ``gitstafette`` command: thin on purpose. Parse, configure logging, build the config, run.

One module a command (server, client, events) or group of small ones (tools); what they share is in common.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gitstafette import __version__
from gitstafette.cli import client, server, tools
from gitstafette.cli.events import events_app

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


app.command(short_help="Receive webhooks, store them and stream them to clients.")(server.server)
app.command(short_help="Stream events from a server and deliver them to a target.")(client.client)
app.command("send-webhook", short_help="Post a webhook payload file the way GitHub does.")(tools.send_webhook)
app.command("hash-token", short_help="Print the SHA-256 of a client token, for a tokens file.")(tools.hash_token)
app.command(short_help="Relay two webhooks through a local server, client and target.")(tools.demo)
app.command(short_help="Create a development CA and certificates for (mutual) TLS.")(tools.certs)
app.add_typer(events_app)


def main() -> None:
    app()
