"""``gitstafette events``: look at what a server holds and replay dead letters, over its REST API."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import httpx
import typer

__all__ = ["events_app"]

events_app = typer.Typer(
    name="events",
    help="Inspect stored events and dead letters on a server, and replay dead letters.",
    short_help="Inspect stored events and dead letters; replay dead letters.",
    no_args_is_help=True,
    rich_markup_mode=None,  # click's help, as the main command's (see cli/__init__.py)
)

SERVER_URL_HELP = "The server's HTTP address."
ServerUrl = Annotated[str, typer.Option("--server-url", envvar="GITSTAFETTE_SERVER_URL", help=SERVER_URL_HELP)]
DEFAULT_SERVER_URL = "http://127.0.0.1:1323"
ADMIN_TOKEN_HELP = (
    "The server's admin token (needed once the server has tokens configured). Prefer the environment "
    "variable: a command line is visible to other users."
)
AdminToken = Annotated[
    str, typer.Option("--admin-token", envvar="GITSTAFETTE_ADMIN_TOKEN", help=ADMIN_TOKEN_HELP, show_default=False)
]


def _call(method: str, url: str, admin_token: str = "", **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {admin_token.strip()}"} if admin_token.strip() else {}
    try:
        response = httpx.request(method, url, timeout=30, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"gitstafette: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        typer.echo(f"gitstafette: {response.status_code} from {url}: {detail}", err=True)
        if response.status_code == 401 and not admin_token:
            typer.echo("gitstafette: pass --admin-token or set GITSTAFETTE_ADMIN_TOKEN", err=True)
        raise typer.Exit(1)
    return response.json()


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


@events_app.command("list", short_help="List a repository's events, or the dead letters.")
def list_events(
    repository: Annotated[
        str | None, typer.Option(help="A repository id or owner/name: list its events with each client's state.")
    ] = None,
    dead_letters: Annotated[bool, typer.Option("--dead-letters", help="List dead letters instead.")] = False,
    client_id: Annotated[str | None, typer.Option(help="Only this client id's dead letters.")] = None,
    server_url: ServerUrl = DEFAULT_SERVER_URL,
    admin_token: AdminToken = "",
) -> None:
    """List the events of a repository, or the dead letters (of every repository, or one)."""
    base = server_url.rstrip("/")
    if dead_letters or repository is None:
        params = {k: v for k, v in {"repository": repository, "client_id": client_id}.items() if v}
        letters = _call("GET", f"{base}/v1/dead-letters", admin_token, params=params)["dead_letters"]
        if not letters:
            typer.echo("no dead letters")
        for d in letters:
            typer.echo(
                f"{_when(d['failed_at'])}  {d['repository_id']}#{d['sequence']}  delivery {d['delivery_id']}  "
                f"client {d['client_id']}  status {d['status_code']}  {d['reason']}"
            )
        return
    listing = _call("GET", f"{base}/v1/events/{repository}", admin_token)
    typer.echo(f"repository {listing['repository_id']} {listing['repository_name']}".rstrip())
    for event in listing["events"]:
        states = ", ".join(f"{c}: {s['state']}" for c, s in sorted(event["clients"].items())) or "no client yet"
        typer.echo(
            f"#{event['sequence']:<6} {_when(event['received_at'])}  {event['event']:<14} "
            f"{event['delivery_id']}  {event['body_bytes']} bytes  [{states}]"
        )


@events_app.command("replay")
def replay(
    repository: Annotated[str, typer.Option(help="The repository id or owner/name.")],
    client_id: Annotated[str, typer.Option(help="The client id to send the events to again.")],
    sequence: Annotated[
        int | None, typer.Option(help="One event's sequence; without it, every dead letter of the repository.")
    ] = None,
    server_url: ServerUrl = DEFAULT_SERVER_URL,
    admin_token: AdminToken = "",
) -> None:
    """Send a dead letter (or any retained event) to a client id again."""
    body: dict[str, Any] = {"client_id": client_id, "repository_id": repository}
    if sequence is not None:
        body["sequence"] = sequence
    answer = _call("POST", f"{server_url.rstrip('/')}/v1/dead-letters/replay", admin_token, json=body)
    replayed = answer["replayed"]
    if not replayed:
        typer.echo(f"nothing to replay: client {client_id} has no dead letters for {answer['repository_id']}")
    else:
        numbers = ", ".join(f"#{s}" for s in replayed)
        typer.echo(f"replaying {numbers} of {answer['repository_id']} to client {client_id}")
