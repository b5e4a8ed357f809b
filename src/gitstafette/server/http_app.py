"""The HTTP side of the server: webhook ingest, the read API, health and metrics (starlette)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gitstafette import __version__
from gitstafette.exceptions import StoreError, WebhookRejected
from gitstafette.github.webhook import parse_webhook, routed_by_header
from gitstafette.model import AuditRecord, DeadLetter, WebhookEvent
from gitstafette.server.auth import Authenticator
from gitstafette.server.ingest import Outcome
from gitstafette.server.parts import ServerParts

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

#: A body this much over the limit is read and dropped before the 413; a larger one is not read at all.
DRAIN_MAX_BYTES = 1024 * 1024


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"status": status_code, "detail": detail}, status_code=status_code)


async def _read_body(headers: Mapping[str, str], receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing with 413 as soon as it is known to exceed ``limit``, and with 408 when it
    has not all arrived within ``timeout_s`` (a sender trickling bytes must not hold the server).

    A declared Content-Length over the limit is refused before a byte of the body is read; a chunked
    body is refused once what arrived passes the limit.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_body(headers, receive, limit)
    except TimeoutError:
        raise WebhookRejected(408, f"the request body did not arrive within {timeout_s:g}s") from None


async def _receive_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    """The body from the ASGI ``receive`` (as starlette's ``Request.stream`` reads it: ClientDisconnect when
    the sender goes away first)."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookRejected(400, "Content-Length is not a number")
        if int(declared) > limit:
            if int(declared) - limit <= DRAIN_MAX_BYTES:
                # A sender that writes its whole body before reading the answer would get a connection
                # reset instead of the 413 if we closed with its bytes unread; a little is worth reading.
                while (await _receive_chunk(receive))[1]:
                    pass
            raise WebhookRejected(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunk, more = await _receive_chunk(receive)
    if not more and len(chunk) <= limit:
        return chunk  # the usual case: the whole body in one message
    chunks = [chunk]
    size = len(chunk)
    while True:
        if size > limit:
            raise WebhookRejected(413, f"body is over the limit of {limit} bytes")
        if not more:
            return b"".join(chunks)
        chunk, more = await _receive_chunk(receive)
        size += len(chunk)
        chunks.append(chunk)


async def _receive_chunk(receive: Receive) -> tuple[bytes, bool]:
    """One piece of the body, and whether more follows."""
    message = await receive()
    if message["type"] == "http.request":
        return message.get("body", b""), bool(message.get("more_body", False))
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return b"", True  # pragma: no cover - no other message comes before the body ends


async def _send_response(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, content: dict[str, Any], extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """What starlette's ``JSONResponse(content, status)`` sends (``extra_headers`` after its own)."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    headers = _json_headers(body)
    headers.extend(extra_headers)
    await _send_response(send, status, headers, body)


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of starlette's JSONResponse, in its order."""
    return [(b"content-length", str(len(body)).encode("latin-1")), (b"content-type", b"application/json")]


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

    def __init__(self, parts: ServerParts) -> None:
        self.config, self.store, self.ingest = parts.config, parts.store, parts.ingest
        self.server_metrics, self.dispatcher, self.auth, self.audit = (
            parts.metrics,
            parts.dispatcher,
            parts.auth,
            parts.audit,
        )
        #: repository id → owner/name, learnt from the first webhook of each repository
        self.names: dict[str, str] = {}

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/github(/)``, straight from ASGI: the hot path, without starlette's middleware and router
        (the answers are the ones starlette's responses would give, byte for byte)."""
        received_at_ns = time.time_ns()
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            # by lower-case name, the first of repeated ones wins (as starlette's Headers.get)
            headers.setdefault(name.lower(), value)
        try:
            body = await _read_body(headers, receive, self.config.max_body_bytes, self.config.request_timeout_s)
            event = parse_webhook(headers, raw_headers, body, self.config.repositories, received_at_ns, self.names)
        except WebhookRejected as exc:
            await self._refuse(headers, exc, send)
            return
        except ClientDisconnect:
            logger.info("webhook sender went away before the body was complete")
            await _send_response(send, 400, [(b"content-length", b"0")], b"")  # starlette's Response(status_code=400)
            return
        # An organization or App hook was routed by its body, which parse_webhook has then parsed.
        outcome = await self.ingest.store_event(event, body_checked=not routed_by_header(headers))
        if event.repository_name and outcome.status_code in (201, 204):
            self.names[event.repository_id] = event.repository_name
        if outcome.status_code == 204:
            await _send_response(send, 204, [], b"")  # starlette's Response(status_code=204): no Content-Length
        elif outcome.status_code != 201 or outcome.event is None:
            await _send_json(send, outcome.status_code, {"status": outcome.status_code, "detail": outcome.detail})
        else:
            # What _send_json would send for {"delivery_id", "repository_id", "sequence"}, without building
            # a JSON encoder for each webhook (json.dumps does with non-default options).
            body = (
                f'{{"delivery_id":{encode_basestring(event.delivery_id)},'
                f'"repository_id":{encode_basestring(event.repository_id)},'
                f'"sequence":{int(outcome.event.sequence)}}}'
            ).encode()
            await _send_response(send, 201, _json_headers(body), body)

    async def _refuse(self, headers: Mapping[str, str], exc: WebhookRejected, send: Send) -> None:
        label = {413: "too-large", 406: "rejected-unwatched", 408: "timeout"}.get(exc.status_code, "rejected-invalid")
        repository_id = headers.get("x-github-hook-installation-target-id", "")
        self.ingest.count(Outcome(exc.status_code, exc.detail, label), repository_id, headers.get("x-github-event", ""))
        logger.info(
            "webhook %s refused with %d: %s",
            headers.get("x-github-delivery", "(no delivery id)"),
            exc.status_code,
            exc.detail,
        )
        # 408, 413: the rest of the body is not read; the connection cannot be reused.
        close = [(b"connection", b"close")] if exc.status_code in (408, 413) else []
        await _send_json(send, exc.status_code, {"status": exc.status_code, "detail": exc.detail}, close)

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
        await self.server_metrics.backlog.refresh()
        return Response(generate_latest(self.server_metrics.registry), media_type=CONTENT_TYPE_LATEST)


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


class _Front:
    """The server's ASGI app: webhooks (``POST /v1/github/``, also without the slash) go straight to their
    handler; everything else, and every other method on those paths, to the starlette app.

    The webhook is the one request that comes at a rate; starlette's middleware stack and router cost it
    about a tenth of the server's CPU. Starlette's behaviour is kept: an unexpected error answers 500
    ``Internal Server Error`` (when nothing was sent yet) and is raised on to uvicorn, which logs it.
    """

    def __init__(self, endpoints: _Endpoints, app: ASGIApp) -> None:
        self.endpoints = endpoints
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _WEBHOOK_PATHS:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.endpoints.webhook(scope, receive, tracked_send)
        except Exception:
            if not started:
                await _send_response(
                    send,
                    500,
                    [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")],
                    b"Internal Server Error",
                )
            raise


_WEBHOOK_PATHS = frozenset({"/v1/github/", "/v1/github"})


def create_app(parts: ServerParts) -> ASGIApp:
    endpoints, auth = _Endpoints(parts), parts.auth

    async def webhook_not_allowed(request: Request) -> Response:  # pragma: no cover - _Front answers POST
        raise AssertionError("POST /v1/github/ is answered in front of starlette")

    routes: list[BaseRoute] = [
        # Answered by _Front; listed so that other methods get starlette's 405 with its Allow header.
        Route("/v1/github/", webhook_not_allowed, methods=["POST"]),
        Route("/v1/github", webhook_not_allowed, methods=["POST"]),
        Route("/", endpoints.root, methods=["GET"]),
        Route("/v1/watchlist", endpoints.watchlist, methods=["GET"]),
        Route("/v1/events/{repo:path}", _admin_only(auth, endpoints.events), methods=["GET"]),
        Route("/v1/dead-letters", _admin_only(auth, endpoints.dead_letters), methods=["GET"]),
        Route("/v1/dead-letters/replay", _admin_only(auth, endpoints.replay), methods=["POST"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
    ]
    if parts.config.state_api:
        from gitstafette.state import StateApp  # strawberry is imported only by a server that serves it

        state = StateApp(parts)
        routes += [Route("/graphql", state), WebSocketRoute("/graphql", state)]
    return _Front(endpoints, Starlette(routes=routes))
