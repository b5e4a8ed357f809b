"""The GraphQL schema of the state API: what the store holds and what the dispatcher is doing, read-only.

Events are paged Relay-style over the store's own order (a repository's sequence), with keyset cursors:
a page is one ``read_after(repository, sequence of the cursor, first + 1)``, never an offset, so paging
through a repository while webhooks arrive gives each event exactly once.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import DisableIntrospection, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.types import ExecutionContext, Info

from gitstafette import __version__
from gitstafette.exceptions import StoreError
from gitstafette.model import AuditRecord, DeadLetter, RepositoryState, WebhookEvent
from gitstafette.server.dispatch import ConnectionState
from gitstafette.server.parts import ServerParts
from gitstafette.state.access import PAYLOAD, READ, Principal, StateRefused

__all__ = ["MAX_DEPTH", "MAX_PAGE", "StateContext", "build_schema"]

logger = logging.getLogger(__name__)

#: the most events one page may ask for (``first``)
MAX_PAGE = 100
#: events a page with an ``eventType`` filter reads at most; a page that found fewer matches ends there,
#: with ``hasNextPage`` and an ``endCursor`` past what it read, so that no query scans a whole repository
MAX_SCAN_EVENTS = 5000
#: the deepest selection a query may have: ``repositories { events { edges { node { headers { name } } } } }``
#: is 6; Event.repository makes the schema a cycle, which this bounds
MAX_DEPTH = 6
#: the most tokens and aliases one query document may hold: bounds what one request can make the server do
MAX_TOKENS = 2000
MAX_ALIASES = 20
_SCAN_BATCH = 500


@dataclass
class StateContext:
    """What each resolver gets (``info.context``): the server's parts and who asks."""

    parts: ServerParts
    principal: Principal


def _context(info: Info[StateContext, None]) -> StateContext:
    context = info.context
    context.principal.require(READ, "the state API")
    return context


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"sequence:{sequence}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "sequence" and value.isdigit():
            return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise StateRefused(f"{cursor!r} is not a cursor of this API (take endCursor or an edge's cursor)")


def _event_id(repository_id: str, sequence: int) -> str:
    return f"{repository_id}:{sequence}"


def _parse_event_id(event_id: str) -> tuple[str, int]:
    repository_id, _, sequence = event_id.partition(":")
    if not repository_id or not sequence.isdigit():
        raise StateRefused(f"{event_id!r} is not an event id (REPOSITORY_ID:SEQUENCE, as Event.id gives it)")
    return repository_id, int(sequence)


# ---- types -----------------------------------------------------------------------------------------


@strawberry.type
class StoreInfo:
    kind: str
    healthy: bool
    #: why the store is not healthy
    error: str | None


@strawberry.type
class ServerInfo:
    version: str
    server_id: str
    store: StoreInfo


@strawberry.type
class ClientCursor:
    client_id: str
    #: the highest sequence the client acknowledged
    cursor: int
    #: retained events after the cursor
    backlog: int


@strawberry.type
class Repository:
    id: str
    name: str
    #: whether the server accepts this repository's webhooks (its --repositories)
    watched: bool
    event_count: int
    first_sequence: int
    last_sequence: int
    #: when the newest retained event arrived
    last_delivery_at: datetime | None
    cursors: list[ClientCursor]
    _state: strawberry.Private[RepositoryState]

    @strawberry.field(description=f"The repository's events in sequence order, at most {MAX_PAGE} a page.")
    async def events(
        self,
        info: Info[StateContext, None],
        after: str | None = None,
        first: int = 20,
        event_type: str | None = None,
    ) -> EventConnection:
        return await _events_page(_context(info), self._state, after, first, event_type)


@strawberry.type
class Header:
    name: str
    value: str


@strawberry.type
class Event:
    id: strawberry.ID
    repository_id: str
    repository_name: str
    sequence: int
    delivery_id: str
    event_type: str
    received_at: datetime
    headers: list[Header]
    body_size: int
    _body: strawberry.Private[bytes]

    @strawberry.field(description="The repository of the event, as ``repositories`` shows it.")
    async def repository(self, info: Info[StateContext, None]) -> Repository | None:
        context = _context(info)
        state = await _repository(context, self.repository_id)
        return None if state is None else await _repository_of(context, state)

    @strawberry.field(description="The webhook body as text (UTF-8). Needs the scope read:payload.")
    def body(self, info: Info[StateContext, None]) -> str:
        info.context.principal.require(PAYLOAD, "Event.body")
        return self._body.decode("utf-8", errors="replace")

    @classmethod
    def of(cls, event: WebhookEvent) -> Event:
        return cls(
            id=strawberry.ID(_event_id(event.repository_id, event.sequence)),
            repository_id=event.repository_id,
            repository_name=event.repository_name,
            sequence=event.sequence,
            delivery_id=event.delivery_id,
            event_type=event.event_type,
            received_at=_time(event.received_at_ns),
            headers=[Header(name=name, value=value) for name, value in event.headers],
            body_size=len(event.body),
            _body=event.body,
        )


@strawberry.type
class EventEdge:
    cursor: str
    node: Event


@strawberry.type
class PageInfo:
    has_next_page: bool
    #: where the next page starts (``after``); past the last edge when a filtered page stopped scanning
    end_cursor: str | None


@strawberry.type
class EventConnection:
    edges: list[EventEdge]
    page_info: PageInfo


@strawberry.type
class DeadLetterEntry:
    #: the event that could not be delivered (``event(id)``, while it is retained)
    event_id: strawberry.ID
    delivery_id: str
    client_id: str
    #: why the client gave up, and the target's HTTP status (0: no answer)
    reason: str
    status_code: int
    failed_at: datetime
    repository_id: str
    sequence: int

    @classmethod
    def of(cls, d: DeadLetter) -> DeadLetterEntry:
        event_id = strawberry.ID(_event_id(d.repository_id, d.sequence))
        failed_at = _time(d.failed_at_ns)
        return cls(
            event_id=event_id,
            delivery_id=d.delivery_id,
            client_id=d.client_id,
            reason=d.reason,
            status_code=d.status_code,
            failed_at=failed_at,
            repository_id=d.repository_id,
            sequence=d.sequence,
        )


@strawberry.type
class AuditEntry:
    client_id: str
    #: sent, acknowledged or failed
    action: str
    at: datetime

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEntry:
        return cls(client_id=record.client_id, action=record.action, at=_time(record.at_ns))


@strawberry.type
class ClientLane:
    repository_id: str
    #: the highest sequence acknowledged (None until the lane has read it)
    cursor: int | None
    #: committed events after the cursor
    backlog: int | None
    in_flight: int
    #: waiting while another replica serves this repository to the client id
    standby: bool


@strawberry.type
class ClientConnection:
    client_id: str
    connection_id: int
    address: str
    connected_since: datetime
    #: the repositories the connection subscribed to
    subscribed: list[str]
    lanes: list[ClientLane]


# ---- queries ---------------------------------------------------------------------------------------


async def _repository(context: StateContext, spec: str) -> RepositoryState | None:
    """The state of the repository ``spec`` (an id or owner/name), if the principal may see it."""
    store = context.parts.store
    repository_id = await store.resolve_repository(spec)
    state = await store.repository(repository_id) if repository_id else None
    if state is not None:
        allowed = context.principal.allows(state.repository_id, state.repository_name)
    else:  # unknown here: refused all the same when the token names no such repository
        allowed = context.principal.allows(spec, "") if spec.isdigit() else context.principal.allows("", spec)
    if not allowed:
        raise StateRefused(f"this token may not read repository {spec}")
    return state


async def _events_page(
    context: StateContext, state: RepositoryState, cursor: str | None, first: int, event_type: str | None
) -> EventConnection:
    if not 1 <= first <= MAX_PAGE:
        raise StateRefused(f"first must be between 1 and {MAX_PAGE}")
    after = state.first_sequence - 1 if cursor is None else _decode_cursor(cursor)
    store = context.parts.store
    if event_type is None:
        events = await store.read_after(state.repository_id, after, limit=first + 1)
        page, more = events[:first], len(events) > first
        end = page[-1].sequence if page else None
    else:
        page, more, end, scanned = [], False, None, 0
        while scanned < MAX_SCAN_EVENTS:
            limit = min(_SCAN_BATCH, MAX_SCAN_EVENTS - scanned)
            batch = await store.read_after(state.repository_id, after, limit=limit)
            if not batch:
                break
            scanned += len(batch)
            for event in batch:
                if event.event_type != event_type:
                    continue
                if len(page) == first:
                    more = True
                    break
                page.append(event)
                end = event.sequence
            if more:
                break
            after = batch[-1].sequence
        else:
            # Out of scanning room: the next page goes on after what was read.
            more, end = after < state.last_sequence, after
    return EventConnection(
        edges=[EventEdge(cursor=_encode_cursor(e.sequence), node=Event.of(e)) for e in page],
        page_info=PageInfo(has_next_page=more, end_cursor=None if end is None else _encode_cursor(end)),
    )


def _backlog(state: RepositoryState, cursor: int) -> int:
    """Retained events after ``cursor``."""
    return max(0, min(state.event_count, state.last_sequence - cursor))


async def _last_delivery_at(context: StateContext, state: RepositoryState) -> datetime | None:
    if not state.event_count:
        return None
    event = await context.parts.store.event_at(state.repository_id, state.last_sequence)
    return None if event is None else _time(event.received_at_ns)


async def _repository_of(context: StateContext, state: RepositoryState) -> Repository:
    return Repository(
        id=state.repository_id,
        name=state.repository_name,
        watched=context.parts.config.repositories.watches(state.repository_id, state.repository_name),
        event_count=state.event_count,
        first_sequence=state.first_sequence,
        last_sequence=state.last_sequence,
        last_delivery_at=await _last_delivery_at(context, state),
        cursors=[
            ClientCursor(client_id=c, cursor=s, backlog=_backlog(state, s))
            for c, s in sorted(state.cursors.items())
            if context.principal.sees_client(c)
        ],
        _state=state,
    )


def _client_connection(context: StateContext, connection: ConnectionState, latest: dict[str, int]) -> ClientConnection:
    """``latest``: repository → its last stored sequence, for the backlogs."""
    return ClientConnection(
        client_id=connection.client_id,
        connection_id=connection.connection_id,
        address=connection.peer,
        connected_since=_time(connection.connected_at_ns),
        subscribed=list(connection.wanted),
        lanes=[
            ClientLane(
                repository_id=lane.repository_id,
                cursor=lane.cursor,
                backlog=None if lane.cursor is None else max(0, latest.get(lane.repository_id, 0) - lane.cursor),
                in_flight=lane.in_flight,
                standby=lane.standby,
            )
            for lane in connection.lanes
            if context.principal.allows(lane.repository_id)
        ],
    )


@strawberry.type
class Query:
    @strawberry.field(description="This server: version, id, and whether its store answers.")
    async def server(self, info: Info[StateContext, None]) -> ServerInfo:
        context = _context(info)
        parts = context.parts
        error = None
        try:
            await parts.store.ping()
        except StoreError as exc:
            error = str(exc)
        return ServerInfo(
            version=__version__,
            server_id=parts.config.server_id,
            store=StoreInfo(kind=parts.store.kind, healthy=error is None, error=error),
        )

    @strawberry.field(description="The repositories the store holds events or cursors for (those the token may read).")
    async def repositories(self, info: Info[StateContext, None]) -> list[Repository]:
        context = _context(info)
        return [
            await _repository_of(context, state)
            for state in await context.parts.store.repositories()
            if context.principal.allows(state.repository_id, state.repository_name)
        ]

    @strawberry.field(description=f"A repository's events in sequence order, at most {MAX_PAGE} a page.")
    async def events(
        self,
        info: Info[StateContext, None],
        repository: str,
        after: str | None = None,
        first: int = 20,
        event_type: str | None = None,
    ) -> EventConnection:
        context = _context(info)
        state = await _repository(context, repository)
        if state is None:
            return EventConnection(edges=[], page_info=PageInfo(has_next_page=False, end_cursor=None))
        return await _events_page(context, state, after, first, event_type)

    @strawberry.field(description="One retained event by its id (REPOSITORY_ID:SEQUENCE).")
    async def event(self, info: Info[StateContext, None], id: strawberry.ID) -> Event | None:
        context = _context(info)
        repository_id, sequence = _parse_event_id(str(id))
        state = await _repository(context, repository_id)
        if state is None:
            return None
        found = await context.parts.store.event_at(state.repository_id, sequence)
        return None if found is None else Event.of(found)

    @strawberry.field(description="Events clients gave up delivering, oldest first.")
    async def dead_letters(
        self, info: Info[StateContext, None], repository: str | None = None
    ) -> list[DeadLetterEntry]:
        context = _context(info)
        repository_id = None
        if repository is not None:
            state = await _repository(context, repository)
            if state is None:
                return []
            repository_id = state.repository_id
        principal = context.principal
        return [
            DeadLetterEntry.of(letter)
            for letter in await context.parts.store.dead_letters(repository_id)
            if principal.allows(letter.repository_id) and principal.sees_client(letter.client_id)
        ]

    @strawberry.field(description="The clients connected to this server process, with their lanes.")
    async def clients(self, info: Info[StateContext, None]) -> list[ClientConnection]:
        context = _context(info)
        latest = {state.repository_id: state.last_sequence for state in await context.parts.store.repositories()}
        return [
            _client_connection(context, connection, latest)
            for connection in context.parts.dispatcher.connections()
            if context.principal.sees_client(connection.client_id)
        ]

    @strawberry.field(description="Who was sent, and who acknowledged or failed, one event (by its id).")
    async def audit_trail(self, info: Info[StateContext, None], event: strawberry.ID) -> list[AuditEntry]:
        context = _context(info)
        repository_id, sequence = _parse_event_id(str(event))
        state = await _repository(context, repository_id)
        if state is None:
            return []
        await context.parts.audit.flush()  # what was recorded until now is shown
        return [
            AuditEntry.of(record)
            for record in await context.parts.store.audit(state.repository_id, sequence)
            if context.principal.sees_client(record.client_id)
        ]


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """A refusal is the asker's business (a line at info); anything else is a bug, logged with its trace."""
        for error in errors:
            original = error.original_error
            if original is None or isinstance(original, StateRefused):
                logger.info("state API query refused: %s", error.message)
            else:
                logger.error("state API query failed: %s", error.message, exc_info=original)


def build_schema(introspection: bool = True) -> strawberry.Schema:
    extensions: list[Any] = [
        QueryDepthLimiter(max_depth=MAX_DEPTH),
        MaxTokensLimiter(max_token_count=MAX_TOKENS),
        MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
    ]
    if not introspection:
        extensions.append(DisableIntrospection())
    return _Schema(query=Query, extensions=extensions)
