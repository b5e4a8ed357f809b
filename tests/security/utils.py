"""Secrets, tokens files and signed webhooks for the security tests; gRPC calls that report their status."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from tests.grpc_clients import bearer
from tests.utils import FIXTURES, ServerProcess, github_request

PUSH = FIXTURES / "push.0.json"
#: Codertocat/Hello-World, the repository of push.0.json
REPO = "186853002"
REPO_NAME = "Codertocat/Hello-World"
#: a repository no test token except the wildcard one may read
OTHER = "537845873"
TAMPERING_SERVER = Path(__file__).resolve().parent / "tampering_server.py"


def new_secret(label: str) -> str:
    """A random secret, recognisable in a log should it ever leak there."""
    return f"{label}-{secrets.token_urlsafe(18)}"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_request(secret: str | None, path: Path = PUSH, repository_id: str = "") -> tuple[dict[str, str], bytes, str]:
    """A fixture as GitHub posts it, signed with ``secret`` (unsigned with None)."""
    headers, body, fixture_repository = github_request(path)
    if repository_id:
        headers["X-GitHub-Hook-Installation-Target-Type"] = "repository"
        headers["X-GitHub-Hook-Installation-Target-ID"] = repository_id
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(secret, body)
    return headers, body, repository_id or fixture_repository


def post_signed(
    server: ServerProcess, secret: str | None, path: Path = PUSH, repository_id: str = ""
) -> tuple[httpx.Response, str]:
    """Post one signed fixture; the response and its delivery id."""
    headers, body, _ = signed_request(secret, path, repository_id)
    response = httpx.post(f"{server.url}/v1/github/", headers=headers, content=body, timeout=10)
    return response, headers["X-GitHub-Delivery"]


@dataclass(frozen=True)
class Token:
    value: str
    client_id: str
    repositories: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()


def make_token(client_id: str, *repositories: str) -> Token:
    return Token(new_secret(f"token-{client_id}"), client_id, repositories)


def write_tokens(path: Path, *tokens: Token) -> Path:
    """A tokens file in the format its suffix says (.yaml or .toml)."""
    if path.suffix == ".toml":
        blocks = [
            f'[[tokens]]\nsha256 = "{t.sha256}"\nclient_id = "{t.client_id}"\n'
            f"repositories = {json.dumps(list(t.repositories))}\n"
            for t in tokens
        ]
        path.write_text("\n".join(blocks))
    else:
        lines = ["tokens:"]
        for t in tokens:
            lines += [
                f"  - sha256: {t.sha256}",
                f"    client_id: {t.client_id}",
                f"    repositories: {json.dumps(list(t.repositories))}",
            ]
        path.write_text("\n".join(lines) + "\n")
    return path


async def status_of(call: Callable[[], Awaitable[Any]]) -> grpc.StatusCode:
    """The status a call ends with (OK when it succeeds)."""
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


class Calls:
    """Each RPC of gitstafette.v1 once, with a token (or none), reporting the status it ended with.

    The streaming ones report the status of their first message: a refused call fails before any.
    """

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self.stub = pb_grpc.GitstafetteStub(channel)
        self.metadata = bearer(token)

    async def fetch(self, repository_id: str, client_id: str = "someone") -> grpc.StatusCode:
        async def first() -> None:
            call = self.stub.FetchWebhookEvents(
                pb.WebhookEventsRequest(client_id=client_id, repository_id=repository_id, duration_secs=1),
                metadata=self.metadata,
            )
            try:
                await call.read()
            finally:
                call.cancel()

        return await status_of(first)

    async def fetch_all(self, repository_id: str, client_id: str, duration_s: int = 1) -> list[str]:
        """Every delivery id FetchWebhookEvents sends within ``duration_s``."""
        call = self.stub.FetchWebhookEvents(
            pb.WebhookEventsRequest(client_id=client_id, repository_id=repository_id, duration_secs=duration_s),
            metadata=self.metadata,
        )
        return [event.event_id async for response in call for event in response.webhook_events]

    async def stream(self, repository_id: str, client_id: str = "someone") -> grpc.StatusCode:
        """A refused stream fails at once; an accepted one sends its assignment (or, holding no repository
        because other connections of its client id do, nothing until a heartbeat): OK after a moment."""

        async def first() -> None:
            call = self.stub.StreamWebhookEvents(metadata=self.metadata)
            try:
                subscribe = pb.Subscribe(client_id=client_id, repository_ids=[repository_id])
                await call.write(pb.StreamRequest(subscribe=subscribe))
                try:
                    await asyncio.wait_for(call.read(), 2)
                except TimeoutError:
                    pass
            finally:
                call.cancel()

        return await status_of(first)

    async def push(self, repository_id: str, body: bytes, headers: dict[str, str]) -> grpc.StatusCode:
        event = pb.WebhookEvent(
            event_id=headers["X-GitHub-Delivery"],
            body=body,
            headers=[pb.Header(name=k, values=v) for k, v in headers.items()],
        )
        request = pb.WebhookEventPushRequest(cliend_id="pusher", repository_id=repository_id, webhook_event=event)
        return await status_of(lambda: self.stub.WebhookEventPush(request, metadata=self.metadata))

    async def push_response(
        self, repository_id: str, body: bytes, headers: dict[str, str]
    ) -> pb.WebhookEventPushResponse:
        event = pb.WebhookEvent(
            event_id=headers["X-GitHub-Delivery"],
            body=body,
            headers=[pb.Header(name=k, values=v) for k, v in headers.items()],
        )
        request = pb.WebhookEventPushRequest(cliend_id="pusher", repository_id=repository_id, webhook_event=event)
        return await self.stub.WebhookEventPush(request, metadata=self.metadata)

    async def status(self, repository_id: str, client_id: str = "someone") -> grpc.StatusCode:
        request = pb.WebhookEventStatusRequest(client_id=client_id, repository_id=repository_id)
        return await status_of(lambda: self.stub.WebhookEventStatus(request, metadata=self.metadata))

    async def statuses_list(self, client_id: str = "someone") -> list[pb.WebhookEventStatusResponse]:
        call = self.stub.WebhookEventStatuses(
            pb.WebhookEventStatusesRequest(client_id=client_id), metadata=self.metadata
        )
        return [answer async for answer in call]

    async def statuses(self, client_id: str = "someone") -> grpc.StatusCode:
        return await status_of(lambda: self.statuses_list(client_id))


def admin_get(server: ServerProcess, path: str, admin_token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    return httpx.get(f"{server.url}{path}", headers=headers, timeout=10)
