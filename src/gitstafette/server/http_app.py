"""The HTTP side of the server: webhook ingest, the read API, health and metrics (starlette)."""

from __future__ import annotations

import logging
import time
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
from gitstafette.server.ingest import Ingest, Outcome
from gitstafette.store import EventStore

__all__ = ["create_app"]

logger = logging.getLogger("gitstafette.server.http")


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"status": status_code, "detail": detail}, status_code=status_code)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it is known to exceed ``limit``.

    A declared Content-Length over the limit is refused before a byte of the body is read; a chunked
    body is refused once what arrived passes the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookRejected(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise WebhookRejected(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServerConfig, store: EventStore, ingest: Ingest, registry: CollectorRegistry) -> Starlette:
    async def webhook(request: Request) -> Response:
        received_at_ns = time.time_ns()
        try:
            body = await _read_body(request, config.max_body_bytes)
            raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
            event = parse_webhook(request.headers, raw_headers, body, config.repositories, received_at_ns)
        except WebhookRejected as exc:
            outcome = {413: "too-large", 406: "rejected-unwatched"}.get(exc.status_code, "rejected-invalid")
            ingest.count(Outcome(exc.status_code, exc.detail, outcome))
            logger.info(
                "webhook %s refused with %d: %s",
                request.headers.get("x-github-delivery", "(no delivery id)"), exc.status_code, exc.detail,
            )
            response = _problem(exc.status_code, exc.detail)
            if exc.status_code == 413:
                # The rest of the body is not read; the connection cannot be reused.
                response.headers["Connection"] = "close"
            return response
        except ClientDisconnect:
            logger.info("webhook sender went away before the body was complete")
            return Response(status_code=400)
        outcome = await ingest.store_event(event)
        if outcome.status_code == 204:
            return Response(status_code=204)
        if outcome.status_code != 201:
            return _problem(outcome.status_code, outcome.detail)
        assert outcome.event is not None
        return JSONResponse(
            {"delivery_id": event.delivery_id, "repository_id": event.repository_id, "sequence": outcome.event.sequence},
            status_code=201,
        )

    async def root(request: Request) -> Response:
        return JSONResponse({"name": "gitstafette", "version": __version__, "server_id": config.server_id})

    async def watchlist(request: Request) -> Response:
        return JSONResponse({"GitHubRepositoryIDs": config.repositories.entries()})

    async def events(request: Request) -> Response:
        spec = request.path_params["repo"]
        repository_id = await store.resolve_repository(spec)
        state = await store.repository(repository_id) if repository_id else None
        if state is None:
            return _problem(404, f"no events stored for repository {spec}")
        dead = {(d.client_id, d.sequence): d for d in await store.dead_letters(state.repository_id)}
        listed: list[dict[str, Any]] = []
        after = state.first_sequence - 1
        while True:
            batch = await store.read_after(state.repository_id, after, limit=500)
            for event in batch:
                clients = {}
                for client_id, cursor in state.cursors.items():
                    letter = dead.get((client_id, event.sequence))
                    if letter is not None:
                        clients[client_id] = {"state": "dead-letter", "reason": letter.reason, "status_code": letter.status_code}
                    else:
                        clients[client_id] = {"state": "acknowledged" if cursor >= event.sequence else "pending"}
                listed.append(
                    {
                        "sequence": event.sequence,
                        "delivery_id": event.delivery_id,
                        "event": event.event_type,
                        "received_at": event.received_at_ns / 1e9,
                        "body_bytes": len(event.body),
                        "clients": clients,
                    }
                )
            if len(batch) < 500:
                break
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

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        try:
            await store.ping()
        except StoreError as exc:
            return PlainTextResponse(f"store unavailable: {exc}", status_code=503)
        return PlainTextResponse("ready")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v1/github/", webhook, methods=["POST"]),
        Route("/v1/github", webhook, methods=["POST"]),
        Route("/", root, methods=["GET"]),
        Route("/v1/watchlist", watchlist, methods=["GET"]),
        Route("/v1/events/{repo:path}", events, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes)
