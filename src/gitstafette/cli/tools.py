"""The small commands: send a webhook, hash a token, the demo, development certificates."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gitstafette import constants
from gitstafette.cli.common import LOG_LEVEL_HELP, configure_logging, fail
from gitstafette.config import ClientConfig
from gitstafette.exceptions import ConfigError

__all__ = ["certs", "demo", "hash_token", "send_webhook"]


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

    configure_logging(log_level)
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
        raise fail(exc) from exc
    except OSError as exc:
        typer.echo(f"gitstafette: cannot write into {out}: {exc}", err=True)
        raise typer.Exit(1) from exc
    for line in instructions(written, server_names):
        typer.echo(line)
