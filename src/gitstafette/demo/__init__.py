"""``gitstafette demo``: a server, a client and a target on free loopback ports, and two webhooks through them
(the second shows the relay warm)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gitstafette._http import EmbeddedHttpServer
from gitstafette.client.app import Client
from gitstafette.client.webhook_sender import github_headers
from gitstafette.config import ClientConfig, ServerConfig, StoreConfig
from gitstafette.model import Watchlist
from gitstafette.security.secret import Secret
from gitstafette.server.server import Server

__all__ = ["DemoReport", "builtin_payload", "run_demo"]

#: How long the demo waits for each step before it says what did not happen.
STEP_TIMEOUT_S = 20.0


def builtin_payload() -> bytes:
    """A small push payload shipped with the package."""
    return resources.files(__package__).joinpath("push.json").read_bytes()


@dataclass
class DemoReport:
    """What the demo did: addresses, the answer to the webhook, what the target got, and how fast."""

    server_http: str = ""
    server_grpc: str = ""
    target_url: str = ""
    sent_headers: dict[str, str] = field(default_factory=dict)
    status_code: int = 0
    received_headers: dict[str, str] = field(default_factory=dict)
    received_body: bytes = b""
    post_to_201_ms: float = 0.0
    post_to_target_ms: float = 0.0


class _Target:
    """A webhook receiver that remembers the first request it gets, and when."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.headers: dict[str, str] = {}
        self.body = b""
        self.at = 0.0

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        if not self.arrived.is_set():
            self.at = time.perf_counter()  # the target runs in the demo's own process: one clock
            self.headers = dict(request.headers.items())
            self.body = body
            self.arrived.set()
        return PlainTextResponse("thanks")


async def run_demo(payload: bytes, event: str = "push", say: Callable[[str], None] = print) -> DemoReport:
    """Relay ``payload`` once through a real server and client to a local target."""
    report = DemoReport()
    # Secured as it should be: GitHub's signature, checked by the server and again by the client, and a
    # client token; both made up for this one run.
    webhook_secret, token = Secret(secrets.token_urlsafe(24)), Secret(secrets.token_urlsafe(24))
    headers = github_headers(payload, event)
    repository_id = headers.get("X-GitHub-Hook-Installation-Target-ID", "")
    if headers.get("X-GitHub-Hook-Installation-Target-Type") != "repository" or not repository_id:
        raise ValueError("the demo payload has no repository.id: gitstafette relays repository events")

    target = _Target()
    target_http = EmbeddedHttpServer(
        Starlette(routes=[Route("/github-webhook/", target.hook, methods=["POST"])]),
        "127.0.0.1",
        0,
        grace_s=1,
        name="demo-target",
    )
    server = Server(
        ServerConfig(
            repositories=Watchlist.parse(repository_id),
            host="127.0.0.1",
            http_port=0,
            grpc_port=0,
            store=StoreConfig("memory"),
            shutdown_grace_s=2,
            webhook_secret=webhook_secret,
            oauth_token=token,
        )
    )
    client: Client | None = None
    try:
        await target_http.start()
        report.target_url = f"http://127.0.0.1:{target_http.port}/github-webhook/"
        await server.startup()
        report.server_http = f"http://127.0.0.1:{server.http_port}"
        report.server_grpc = f"127.0.0.1:{server.grpc_port}"
        say(f"server  webhooks on {report.server_http}/v1/github/, gRPC on {report.server_grpc} (memory store)")
        client = Client(
            ClientConfig(
                repositories=(repository_id,),
                target=report.target_url,
                servers=(report.server_grpc,),
                client_id="demo",
                insecure=True,
                health_host="127.0.0.1",
                health_port=0,
                shutdown_grace_s=2,
                token=token,
                webhook_secret=webhook_secret,
            )
        )
        await client.startup()
        await _until(lambda: bool(client and client.status()["connected"]), "the client to connect")
        say(f"client  'demo' streams repository {repository_id} and delivers to {report.target_url}")

        async with httpx.AsyncClient() as http:
            for attempt in ("first", "second"):
                # The second webhook shows the relay warm: connections open, code paths loaded.
                target.arrived.clear()
                headers = github_headers(payload, event, secret=webhook_secret.reveal())
                started = time.perf_counter()
                response = await http.post(f"{report.server_http}/v1/github/", headers=headers, content=payload)
                post_to_201_ms = (time.perf_counter() - started) * 1000
                if response.status_code != 201:
                    raise ValueError(f"the server answered {response.status_code}: {response.text}")
                try:
                    await asyncio.wait_for(target.arrived.wait(), STEP_TIMEOUT_S)
                except TimeoutError:
                    raise TimeoutError(f"the webhook did not reach the target within {STEP_TIMEOUT_S:.0f} s") from None
                post_to_target_ms = (target.at - started) * 1000
                say(
                    f"GitHub  {attempt} {event} webhook ({len(payload)} bytes): {response.status_code} in "
                    f"{post_to_201_ms:.2f} ms, at the target {post_to_target_ms:.2f} ms after it was sent"
                )
        report.sent_headers, report.status_code = headers, response.status_code
        report.post_to_201_ms, report.post_to_target_ms = post_to_201_ms, post_to_target_ms
        report.received_headers, report.received_body = target.headers, target.body
        identical = "identical" if target.body == payload else "DIFFERENT"
        say(f"target  received {len(target.body)} bytes ({identical} to what was sent) with:")
        for name in headers:
            say(f"          {name}: {target.headers.get(name.lower(), '(missing)')}")
    finally:
        if client is not None:
            await client.shutdown()
        await server.shutdown()
        await target_http.stop()
    return report


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo timed out waiting for {what}")
        await asyncio.sleep(0.01)
