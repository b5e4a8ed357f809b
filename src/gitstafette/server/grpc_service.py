"""The gRPC side: ``gitstafette.v1.Gitstafette`` (the original RPCs and the acknowledged stream) and ``info.Info``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import NoReturn

import grpc
from opentelemetry.trace import Span

from gitstafette import __version__
from gitstafette._proto import gitstafette_info_pb2 as info_pb
from gitstafette._proto import gitstafette_info_pb2_grpc as info_grpc
from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette.config import ServerConfig
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.github.webhook import repository_in_body
from gitstafette.model import event_from_pb
from gitstafette.server.auth import Grant
from gitstafette.server.dispatch import AssignmentChanged, Connection, EndOfStream, OutboxItem, Outgoing
from gitstafette.server.fetch_stream import FetchStreams
from gitstafette.server.parts import ServerParts
from gitstafette.server.stream_messages import (
    BATCH_MAX_BYTES,
    BATCH_MAX_EVENTS,
    EventMessages,
    FetchResponses,
    StreamResponses,
)

__all__ = ["GitstafetteService", "InfoService"]

logger = logging.getLogger(__name__)


class GitstafetteService(pb_grpc.GitstafetteServicer):
    """``gitstafette.v1.Gitstafette``. Every RPC reads the caller's grant (its token was checked by the
    interceptor) and refuses repositories outside it with PERMISSION_DENIED; a token's client id is the
    one used, whatever the request claims."""

    def __init__(self, parts: ServerParts) -> None:
        config, store, audit = parts.config, parts.store, parts.audit
        self.config, self.store, self.ingest, self.dispatcher = config, store, parts.ingest, parts.dispatcher
        self.auth, self.audit = parts.auth, audit
        messages = EventMessages()  # an event's message is built once for all the streams it goes to
        self._responses = StreamResponses(config.server_id, audit, messages, tracer=parts.tracer)
        self._fetch = FetchStreams(
            store, FetchResponses(audit, config.max_body_bytes, messages), config.heartbeat_s, parts.auth.required
        )

    async def _authorize(
        self, grant: Grant, spec: str, context: grpc.aio.ServicerContext, body_name: str = ""
    ) -> tuple[str, str]:
        """Abort with PERMISSION_DENIED unless ``grant`` covers the repository ``spec`` names (an id or
        owner/name); the (id, owner/name) it was allowed by.

        Checked before the repository is looked up, so a token learns nothing of repositories it may not
        read, not even whether they exist. ``body_name`` is the owner/name a pushed event's own payload
        gives for the requested id.
        """
        if not spec or grant.allows_spec(spec):
            return (spec, "") if spec.isdigit() else ("", spec)
        repository_id = await self.store.resolve_repository(spec)
        if repository_id is not None:
            name = spec if not spec.isdigit() else await self._name_of(repository_id) or body_name
            if grant.allows(repository_id, name):
                return repository_id, name
        who = f"client {grant.client_id}" if grant.client_id else "this token"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not read repository {spec}")
        raise AssertionError("abort returned")  # pragma: no cover

    async def _name_of(self, repository_id: str) -> str:
        state = await self.store.repository(repository_id)
        return state.repository_name if state else ""

    async def _store_unavailable(self, context: grpc.aio.ServicerContext, client_id: str, exc: StoreError) -> NoReturn:
        """End a stream that cannot be set up because of the store, instead of a stream that stays open without
        being subscribed: UNAVAILABLE, which clients retry, while the store does not answer; INTERNAL, logged as
        an error, when it failed in a way that trying again will not mend."""
        if isinstance(exc, StoreUnavailable):
            logger.warning("client %s: stream refused, the store does not answer: %s", client_id, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the server's store does not answer ({exc}); try again")
        await self._store_failed(context, client_id, exc)
        raise AssertionError("abort returned")  # pragma: no cover

    async def _store_failed(self, context: grpc.aio.ServicerContext, client_id: str, exc: StoreError) -> NoReturn:
        """End a stream whose store failed in a way that trying again will not mend: INTERNAL, and an error for
        the operator (a Sentry event, with the traceback)."""
        logger.error("client %s: stream ended, the store failed: %s", client_id, exc, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "the server's store failed; see the server's log")
        raise AssertionError("abort returned")  # pragma: no cover

    async def _repository(self, spec: str, context: grpc.aio.ServicerContext) -> str:
        """The repository id a request names, or abort with a status that says what is wrong."""
        repository_id = await self._lookup(spec, context)
        assert repository_id is not None
        return repository_id

    async def _lookup(self, spec: str, context: grpc.aio.ServicerContext, unseen_names: bool = False) -> str | None:
        """The repository id a request names, or abort with a status that says what is wrong.

        With ``unseen_names``, a watched owner/name that no stored event has named yet gives None
        instead of NOT_FOUND: the caller resolves it once its first event arrives.
        """
        if not spec:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "repository_id is required")
        repository_id = await self.store.resolve_repository(spec)
        if repository_id is None:
            if unseen_names and self.config.repositories.watches("", spec):
                return None
            await context.abort(grpc.StatusCode.NOT_FOUND, f"repository {spec} has no events on this server yet")
        assert repository_id is not None
        name = "" if spec.isdigit() else spec
        if not name and not self.config.repositories.watches_id(repository_id):
            state = await self.store.repository(repository_id)
            name = state.repository_name if state else ""
        if not self.config.repositories.watches(repository_id, name):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"repository {spec} is not watched by this server (watching {self.config.repositories})",
            )
        return repository_id

    # ---- the original contract ----------------------------------------------------------------

    async def FetchWebhookEvents(
        self, request: pb.WebhookEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WebhookEventsResponse]:
        grant = await self.auth.grant(context)
        client_id = grant.client_id_for(request.client_id) or context.peer()
        try:
            allowed = await self._authorize(grant, request.repository_id, context)
            repository_id = await self._repository(request.repository_id, context)
            if request.last_received_event_id:
                after = request.last_received_event_id
            else:
                after = await self.store.start_cursor(client_id, repository_id)
        except StoreError as exc:
            await self._store_unavailable(context, client_id, exc)
        deadline = time.monotonic() + request.duration_secs if request.duration_secs else None
        logger.info("FetchWebhookEvents: client %s, repository %s, after %d", client_id, repository_id, after)
        with self.auth.session(grant, [allowed]) as session:
            try:
                async with contextlib.aclosing(
                    self._fetch.stream(session, client_id, repository_id, after, deadline)
                ) as fetch:
                    async for response in fetch:
                        yield response
            except StoreError as exc:  # not StoreUnavailable: that, the stream waits out
                await self._store_failed(context, client_id, exc)
            if session.ended is not None:
                await context.abort(*session.ended)

    async def WebhookEventPush(
        self, request: pb.WebhookEventPushRequest, context: grpc.aio.ServicerContext
    ) -> pb.WebhookEventPushResponse:
        grant = await self.auth.grant(context)
        if not request.repository_id or not request.HasField("webhook_event"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "repository_id and webhook_event are required")
        event = event_from_pb(request.webhook_event, request.repository_id, time.time_ns())
        body_name = ""
        if not grant.allows_spec(request.repository_id):
            body_id, name = repository_in_body(event.body, event.header("content-type") or "application/json")
            body_name = name if body_id == request.repository_id else ""
        await self._authorize(grant, request.repository_id, context, body_name)
        outcome = await self.ingest.store_event(event)
        return pb.WebhookEventPushResponse(
            response_code=str(outcome.status_code),
            response_description=outcome.detail,
            accepted=outcome.status_code in (201, 204),
        )

    def _status(self, client_id: str, repository_id: str, count: int, status: str) -> pb.WebhookEventStatusResponse:
        return pb.WebhookEventStatusResponse(
            server_id=self.config.server_id, count=count, repository_id=repository_id, status=status
        )

    async def _statuses(self, client_id: str, grant: Grant) -> dict[str, pb.WebhookEventStatusResponse]:
        """Per repository the grant covers: events retained, or with a client id, events that client has not
        acknowledged."""
        answers = {}
        for state in await self.store.repositories():
            if not grant.allows(state.repository_id, state.repository_name):
                continue
            if client_id:
                cursor = state.cursors.get(client_id, state.first_sequence - 1)
                count = max(0, state.last_sequence - max(cursor, state.first_sequence - 1))
                status = "OK" if client_id in state.cursors else "NEW_CLIENT"
            else:
                count, status = state.event_count, "OK"
            answers[state.repository_id] = self._status(client_id, state.repository_id, count, status)
        return answers

    async def WebhookEventStatus(
        self, request: pb.WebhookEventStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.WebhookEventStatusResponse:
        grant = await self.auth.grant(context)
        await self._authorize(grant, request.repository_id, context)
        repository_id = await self._repository(request.repository_id, context)
        client_id = grant.client_id_for(request.client_id)
        answer = (await self._statuses(client_id, grant)).get(repository_id)
        return answer or self._status(client_id, repository_id, 0, "OK")

    async def WebhookEventStatuses(
        self, request: pb.WebhookEventStatusesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WebhookEventStatusResponse]:
        grant = await self.auth.grant(context)
        # No repository in the request: a token sees the repositories it may read, and only those.
        for answer in (await self._statuses(grant.client_id_for(request.client_id), grant)).values():
            yield answer

    # ---- extension: the acknowledged stream ----------------------------------------------------

    async def StreamWebhookEvents(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        grant = await self.auth.grant(context)
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "subscribe":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Subscribe")
        assert first is not None
        subscribe = first.subscribe
        client_id = grant.client_id_for(subscribe.client_id)
        if not client_id or not subscribe.repository_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Subscribe needs a client_id and repository_ids")
        if subscribe.client_id and subscribe.client_id != client_id:
            logger.info("a stream claims client id %s; its token's, %s, is used", subscribe.client_id, client_id)
        try:
            allowed = [await self._authorize(grant, spec, context) for spec in subscribe.repository_ids]
            resolved = {spec: await self._lookup(spec, context, unseen_names=True) for spec in subscribe.repository_ids}
        except StoreError as exc:
            await self._store_unavailable(context, client_id, exc)
        # No await from this check to connect(): two streams cannot both take the last place.
        cap = self.config.max_streams_per_client
        if cap and self.dispatcher.connection_count(client_id) >= cap:
            logger.warning("client %s: stream refused, it has %d open already (the limit)", client_id, cap)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client {client_id} already has {cap} streams open, the most this server allows per client id "
                "(--max-streams-per-client)",
            )
        connection = self.dispatcher.connect(
            client_id, [r for r in resolved.values() if r is not None], peer=context.peer() or ""
        )
        unseen = [spec for spec, repository_id in resolved.items() if repository_id is None]
        with self.auth.session(grant, allowed) as session:
            session.on_revoke(connection.close)
            responses = self._serve_stream(request_iterator, connection, unseen, subscribe.accepts_batches)
            async with contextlib.aclosing(responses):
                async for response in responses:
                    yield response
            if session.ended is not None:
                logger.info("client %s: connection %d ended: %s", client_id, connection.id, session.ended[1])
                await context.abort(*session.ended)
        if connection.error is not None:
            await context.abort(grpc.StatusCode.INTERNAL, connection.error)

    async def _serve_stream(
        self,
        request_iterator: AsyncIterator[pb.StreamRequest],
        connection: Connection,
        unseen: list[str],
        batches: bool,
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        """One acknowledged stream, once subscribed: its events, assignments and heartbeats, while a task
        reads its acknowledgements. With ``batches``, the events that are ready go in one message."""
        reader = asyncio.create_task(self._read_settlements(request_iterator, connection))
        resolver = asyncio.create_task(self._resolve_later(unseen, connection)) if unseen else None
        heartbeat_s, responses = self.config.heartbeat_s, self._responses
        #: an item taken from the outbox while gathering a batch that does not fit in it: sent next
        held: list[OutboxItem] = []
        try:
            while True:
                if held:
                    item = held.pop()
                else:
                    try:
                        item = connection.outbox.get_nowait()
                    except asyncio.QueueEmpty:
                        try:
                            # A timeout, not wait_for: wait_for makes a task of its own for every message.
                            async with asyncio.timeout(heartbeat_s):
                                item = await connection.outbox.get()
                        except TimeoutError:
                            yield responses.heartbeat()
                            continue
                match item:
                    case Outgoing():
                        batch = self._batch(connection, item, held) if batches else [item]
                        spans: list[Span] = []  # the stream spans of the events in this message (when tracing)
                        yield responses.events(connection.client_id, batch, spans)
                        for span in spans:
                            span.end()
                    case AssignmentChanged():
                        yield responses.subscribed(connection.serving())
                    case EndOfStream():
                        break
        finally:
            for task in (reader, resolver):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.dispatcher.disconnect(connection)

    @staticmethod
    def _batch(connection: Connection, first: Outgoing, held: list[OutboxItem]) -> list[Outgoing]:
        """``first`` and the events queued behind it that fit in one message. An item taken from the outbox that
        does not fit goes to ``held``, to be sent next."""
        batch = [first]
        size = len(first.event.body)
        while len(batch) < BATCH_MAX_EVENTS:
            try:
                following = connection.outbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if not isinstance(following, Outgoing) or size + len(following.event.body) > BATCH_MAX_BYTES:
                held.append(following)
                break
            batch.append(following)
            size += len(following.event.body)
        return batch

    async def _resolve_later(self, names: list[str], connection: Connection) -> None:
        """Add owner/name subscriptions to the connection as their first events arrive."""
        logger.info("client %s: waiting for a first event of %s", connection.client_id, ", ".join(names))
        while names and not self.store.closed:
            # Marked before the lookups: a first event stored while they run wakes the next wait at once.
            mark = self.store.changes()
            found = {name: await self.store.resolve_repository(name) for name in names}
            names = [name for name, repository_id in found.items() if repository_id is None]
            ids = [repository_id for repository_id in found.values() if repository_id is not None]
            if ids:
                self.dispatcher.extend(connection, ids)
            if names:
                await self.store.wait_any(timeout=None, since=mark)

    async def _read_settlements(
        self, request_iterator: AsyncIterator[pb.StreamRequest], connection: Connection
    ) -> None:
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("kind")
                if kind in ("ack", "acks"):
                    for ack in [request.ack] if kind == "ack" else request.acks.acks:
                        if await self.dispatcher.settle(connection, ack.repository_id, ack.sequence):
                            self.audit.record(connection.client_id, ack.repository_id, ack.sequence, "acknowledged")
                elif kind == "failure":
                    failure = request.failure
                    if await self.dispatcher.settle(
                        connection, failure.repository_id, failure.sequence, (failure.reason, failure.status_code)
                    ):
                        self.audit.record(connection.client_id, failure.repository_id, failure.sequence, "failed")
                else:
                    logger.warning("client %s: ignoring a second %s on one stream", connection.client_id, kind)
        except (grpc.aio.AioRpcError, StoreError) as exc:
            logger.info("client %s: connection %d stopped reading: %s", connection.client_id, connection.id, exc)
        # The client half-closed or went away: end the response stream too.
        connection.close()


class InfoService(info_grpc.InfoServicer):
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        #: the port actually bound (the configured one may be 0)
        self.grpc_port = config.grpc_port

    async def GetInfo(
        self, request: info_pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> info_pb.GetInfoResponse:
        hostname = socket.gethostname()
        try:
            ip = socket.gethostbyname(hostname)
        except OSError:
            ip = ""
        return info_pb.GetInfoResponse(
            alive=True,
            instance_type=info_pb.SERVER,
            version=__version__,
            name="gitstafette",
            server=info_pb.ServerInfo(
                hostname=hostname,
                ip=ip,
                port=str(self.grpc_port),
                protocol="grpc",
                repositories=str(self.config.repositories),
            ),
        )
