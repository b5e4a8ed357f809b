"""The HTTP side of the server: webhook ingest, the read API, health and metrics (starlette)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gitstafette import __version__
from gitstafette.config import ServerConfig
from gitstafette.exceptions import StoreError, WebhookRejected
from gitstafette.github.webhook import parse_webhook
from gitstafette.model import AuditRecord, DeadLetter, WebhookEvent
from gitstafette.server.audit import AuditLog
from gitstafette.server.auth import Authenticator
from gitstafette.server.dispatch import Dispatcher
from gitstafette.server.ingest import Ingest, Outcome
from gitstafette.store import EventStore

__all__ = ["create_app"]

logger = logging.getLogger("gitstafette.server.http")

#: A body this much over the limit is read and dropped before the 413; a larger one is not read at all.
DRAIN_MAX_BYTES = 1024 * 1024


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"status": status_code, "detail": detail}, status_code=status_code)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing with 413 as soon as it is known to exceed ``limit``, and with 408 when it
    has not all arrived within ``timeout_s`` (a sender trickling bytes must not hold the server).

    A declared Content-Length over the limit is refused before a byte of the body is read; a chunked
    body is refused once what arrived passes the limit.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_body(request, limit)
    except TimeoutError:
        raise WebhookRejected(408, f"the request body did not arrive within {timeout_s:g}s") from None


async def _receive_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookRejected(400, "Content-Length is not a number")
        if int(declared) > limit:
            if int(declared) - limit <= DRAIN_MAX_BYTES:
                # A sender that writes its whole body before reading the answer would get a connection
                # reset instead of the 413 if we closed with its bytes unread; a little is worth reading.
                async for _ in request.stream():
                    pass
            raise WebhookRejected(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _event_entry(
    event: WebhookEvent,
    cursors: Mapping[str, int],
    dead: Mapping[tuple[str, int], DeadLetter],
    audit: Mapping[int, list[AuditRecord]],
) -> dict[str, Any]:
    """One event of ``GET /v1/events/{repo}``, with each known client's state and its audit trail."""
    clients: dict[str, dict[str, Any]] = {}
    for client_id, cursor in cursors.items():
        letter = dead.get((client_id, event.sequence))
        if letter is not None:
            clients[client_id] = {"state": "dead-letter", "reason": letter.reason, "status_code": letter.status_code}
        else:
            clients[client_id] = {"state": "acknowledged" if cursor >= event.sequence else "pending"}
    return {
        "sequence": event.sequence,
        "delivery_id": event.delivery_id,
        "event": event.event_type,
        "received_at": event.received_at_ns / 1e9,
        "body_bytes": len(event.body),
        "clients": clients,
        "audit": [
            {"client_id": r.client_id, "action": r.action, "at": r.at_ns / 1e9} for r in audit.get(event.sequence, ())
        ],
    }


def _dead_letter_entry(letter: DeadLetter) -> dict[str, Any]:
    return {
        "client_id": letter.client_id,
        "repository_id": letter.repository_id,
        "sequence": letter.sequence,
        "delivery_id": letter.delivery_id,
        "reason": letter.reason,
        "status_code": letter.status_code,
        "failed_at": letter.failed_at_ns / 1e9,
    }


class _Endpoints:
    """The request handlers, sharing the server's config, store and ingest."""

    def __init__(
        self,
        config: ServerConfig,
        store: EventStore,
        ingest: Ingest,
        registry: CollectorRegistry,
        dispatcher: Dispatcher,
        auth: Authenticator,
        audit: AuditLog,
    ) -> None:
        self.config = config
        self.store = store
        self.ingest = ingest
        self.registry = registry
        self.dispatcher = dispatcher
        self.auth = auth
        self.audit = audit
        #: repository id → owner/name, learnt from the first webhook of each repository
        self.names: dict[str, str] = {}

    async def webhook(self, request: Request) -> Response:
        received_at_ns = time.time_ns()
        try:
            body = await _read_body(request, self.config.max_body_bytes, self.config.request_timeout_s)
            raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
            event = parse_webhook(
                request.headers, raw_headers, body, self.config.repositories, received_at_ns, self.names
            )
        except WebhookRejected as exc:
            return self._refuse(request, exc)
        except ClientDisconnect:
            logger.info("webhook sender went away before the body was complete")
            return Response(status_code=400)
        outcome = await self.ingest.store_event(event)
        if event.repository_name and outcome.status_code in (201, 204):
            self.names[event.repository_id] = event.repository_name
        if outcome.status_code == 204:
            return Response(status_code=204)
        if outcome.status_code != 201 or outcome.event is None:
            return _problem(outcome.status_code, outcome.detail)
        return JSONResponse(
            {
                "delivery_id": event.delivery_id,
                "repository_id": event.repository_id,
                "sequence": outcome.event.sequence,
            },
            status_code=201,
        )

    def _refuse(self, request: Request, exc: WebhookRejected) -> Response:
        label = {413: "too-large", 406: "rejected-unwatched", 408: "timeout"}.get(exc.status_code, "rejected-invalid")
        self.ingest.count(Outcome(exc.status_code, exc.detail, label))
        logger.info(
            "webhook %s refused with %d: %s",
            request.headers.get("x-github-delivery", "(no delivery id)"),
            exc.status_code,
            exc.detail,
        )
        response = _problem(exc.status_code, exc.detail)
        if exc.status_code in (408, 413):
            # The rest of the body is not read; the connection cannot be reused.
            response.headers["Connection"] = "close"
        return response

    async def root(self, request: Request) -> Response:
        return JSONResponse({"name": "gitstafette", "version": __version__, "server_id": self.config.server_id})

    async def watchlist(self, request: Request) -> Response:
        return JSONResponse({"GitHubRepositoryIDs": self.config.repositories.entries()})

    async def events(self, request: Request) -> Response:
        spec = request.path_params["repo"]
        await self.audit.flush()  # what was recorded until now is shown
        repository_id = await self.store.resolve_repository(spec)
        state = await self.store.repository(repository_id) if repository_id else None
        if state is None:
            return _problem(404, f"no events stored for repository {spec}")
        dead = {(d.client_id, d.sequence): d for d in await self.store.dead_letters(state.repository_id)}
        audit: dict[int, list[AuditRecord]] = {}
        for record in await self.store.audit(state.repository_id):
            audit.setdefault(record.sequence, []).append(record)
        listed: list[dict[str, Any]] = []
        after = state.first_sequence - 1
        while batch := await self.store.read_after(state.repository_id, after, limit=500):
            listed.extend(_event_entry(event, state.cursors, dead, audit) for event in batch)
            after = batch[-1].sequence
        return JSONResponse(
            {
                "repository_id": state.repository_id,
                "repository_name": state.repository_name,
                "last_sequence": state.last_sequence,
                "cursors": dict(state.cursors),
                "events": listed,
            }
        )

    async def dead_letters(self, request: Request) -> Response:
        repository_id = request.query_params.get("repository")
        client_id = request.query_params.get("client_id")
        if repository_id:
            repository_id = await self.store.resolve_repository(repository_id) or repository_id
        letters = [
            _dead_letter_entry(d)
            for d in await self.store.dead_letters(repository_id)
            if client_id is None or d.client_id == client_id
        ]
        return JSONResponse({"dead_letters": letters})

    async def replay(self, request: Request) -> Response:
        """Send one event (``sequence``) or every dead letter of a repository to a client id again."""
        try:
            asked = await request.json()
            client_id, spec = str(asked["client_id"]), str(asked["repository_id"])
            sequence = asked.get("sequence")
            if sequence is not None and (isinstance(sequence, bool) or not isinstance(sequence, int)):
                raise ValueError("sequence must be an integer")
        except (ValueError, KeyError, TypeError) as exc:
            return _problem(400, f'expected {{"client_id": …, "repository_id": …, "sequence": optional}}: {exc}')
        repository_id = await self.store.resolve_repository(spec)
        if repository_id is None or await self.store.repository(repository_id) is None:
            return _problem(404, f"no events stored for repository {spec}")
        if sequence is not None:
            if await self.store.event_at(repository_id, sequence) is None:
                return _problem(404, f"event {repository_id}#{sequence} is not retained (any more)")
            sequences = [sequence]
        else:
            sequences = sorted(
                d.sequence for d in await self.store.dead_letters(repository_id) if d.client_id == client_id
            )
        if sequences:
            await self.dispatcher.replay(client_id, repository_id, sequences)
        logger.info("replay of %s %s to client %s requested", repository_id, sequences, client_id)
        return JSONResponse(
            {"client_id": client_id, "repository_id": repository_id, "replayed": sequences}, status_code=202
        )

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        try:
            await self.store.ping()
        except StoreError as exc:
            return PlainTextResponse(f"store unavailable: {exc}", status_code=503)
        return PlainTextResponse("ready")

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


Endpoint = Callable[[Request], Awaitable[Response]]


def _admin_only(auth: Authenticator, endpoint: Endpoint) -> Endpoint:
    """``endpoint`` behind the admin token (once the server has any token configured)."""

    async def guarded(request: Request) -> Response:
        if auth.admin_allows(request.headers.get("authorization")):
            return await endpoint(request)
        if not auth.admin_configured:
            return _problem(
                403,
                "this server has client tokens but no admin token, so its read API is closed: "
                "start it with --admin-token-file or GITSTAFETTE_ADMIN_TOKEN",
            )
        logger.info("%s %s refused: no valid admin token", request.method, request.url.path)
        response = _problem(
            401,
            "this read API needs the admin token: send 'Authorization: Bearer <admin token>' "
            "(gitstafette events --admin-token, or GITSTAFETTE_ADMIN_TOKEN)",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="gitstafette"'
        return response

    return guarded


def create_app(
    config: ServerConfig,
    store: EventStore,
    ingest: Ingest,
    registry: CollectorRegistry,
    dispatcher: Dispatcher,
    auth: Authenticator,
    audit: AuditLog,
) -> Starlette:
    endpoints = _Endpoints(config, store, ingest, registry, dispatcher, auth, audit)
    routes = [
        Route("/v1/github/", endpoints.webhook, methods=["POST"]),
        Route("/v1/github", endpoints.webhook, methods=["POST"]),
        Route("/", endpoints.root, methods=["GET"]),
        Route("/v1/watchlist", endpoints.watchlist, methods=["GET"]),
        Route("/v1/events/{repo:path}", _admin_only(auth, endpoints.events), methods=["GET"]),
        Route("/v1/dead-letters", _admin_only(auth, endpoints.dead_letters), methods=["GET"]),
        Route("/v1/dead-letters/replay", _admin_only(auth, endpoints.replay), methods=["POST"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes)
