"""Who gets which event on the acknowledged stream.

Each client id is a *group* of connections. Every repository the group wants is served by one
connection at a time, through a *lane* (``lane.Lane``) that sends the repository's events in sequence
order and keeps at most a window of them unacknowledged. The group's cursor of a repository is the highest
sequence below which everything was acknowledged (or reported failed); it is what the store remembers
(written behind the streams by ``cursor_writer.CursorWriter``), so a lane that ends, for whatever reason,
leaves its unacknowledged events to be sent again by the next.

Lanes are balanced between the connections of a group: a connection holding two lanes more than
another stops sending on one of them, and hands it over once all it sent there is acknowledged, so
order is kept across the handover. The group decides and the lane carries it out: the group asks a lane to
hand off, and takes it away once the lane reports that everything it sent is settled.

Across server replicas sharing a store, a lane serves only while it holds the store's lease of its
(client id, repository) (``EventStore.lease``; the in-process stores grant it at once): a lane whose lease
another replica holds stands by, and takes over from the last acknowledged event once that one is released
or has expired.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

from gitstafette.exceptions import StoreError
from gitstafette.model import WebhookEvent
from gitstafette.server.cursor_writer import CursorWriter
from gitstafette.server.lane import DEFAULT_WINDOW, Lane, LaneContext, Progress, Window
from gitstafette.store import EventStore

__all__ = [
    "AssignmentChanged",
    "Connection",
    "ConnectionState",
    "Dispatcher",
    "EndOfStream",
    "LaneState",
    "OutboxItem",
    "Outgoing",
]

logger = logging.getLogger(__name__)

_connection_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event for the stream to send."""

    event: WebhookEvent
    #: how many times this client id was sent it before, unacknowledged
    redelivery: int
    #: a replayed dead letter (sent again on request, outside the sequence order)
    replay: bool = False


@dataclass(frozen=True, slots=True)
class AssignmentChanged:
    """The repositories the connection serves changed: the stream tells its client (``Subscribed``)."""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The stream ends: cleanly, or with ``error`` (INTERNAL) when a lane of it failed."""

    error: str | None = None


#: What the dispatcher hands a stream, in the order the stream sends it (stream_messages.StreamResponses turns
#: each into its protobuf message).
OutboxItem = Outgoing | AssignmentChanged | EndOfStream

_ASSIGNMENT_CHANGED = AssignmentChanged()
_END_OF_STREAM = EndOfStream()


@dataclass(frozen=True, slots=True)
class LaneState:
    """What one lane of a connection is doing, as the state API shows it."""

    repository_id: str
    #: the group's cursor of the repository (None until the lane has read it from the store)
    cursor: int | None
    #: events sent and not yet acknowledged or failed
    in_flight: int
    #: waiting for the lease that another replica holds
    standby: bool


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A snapshot of one acknowledged stream (:meth:`Dispatcher.connections`)."""

    connection_id: int
    client_id: str
    peer: str
    connected_at_ns: int
    wanted: tuple[str, ...]
    lanes: tuple[LaneState, ...]


class Connection:
    """One acknowledged stream: what it wants, the lanes it holds, and its queue of messages to send.

    :param peer: where the stream comes from (gRPC's ``context.peer()``), for the state API."""

    def __init__(self, client_id: str, wanted: list[str], peer: str = "") -> None:
        self.id = next(_connection_ids)
        self.client_id = client_id
        self.peer = peer
        self.connected_at_ns = time.time_ns()
        self.wanted = list(dict.fromkeys(wanted))
        self.lanes: dict[str, Lane] = {}
        self.outbox: asyncio.Queue[OutboxItem] = asyncio.Queue()
        #: why the stream must end with an error (a lane of it failed); None: it ends cleanly, if at all
        self.error: str | None = None

    def send(self, event: WebhookEvent, redelivery: int, replay: bool = False) -> None:
        self.outbox.put_nowait(Outgoing(event, redelivery, replay))

    def serving(self) -> list[str]:
        """The repositories this connection serves or is about to (not those it stands by for), sorted."""
        return sorted(r for r, lane in self.lanes.items() if not lane.standby)

    def announce(self) -> None:
        self.outbox.put_nowait(_ASSIGNMENT_CHANGED)

    def close(self) -> None:
        self.outbox.put_nowait(_END_OF_STREAM)

    def fail(self, reason: str) -> None:
        """End the stream with an error (INTERNAL, ``reason``) instead of cleanly."""
        if self.error is None:
            self.error = reason
        self.outbox.put_nowait(EndOfStream(reason))

    def __repr__(self) -> str:
        return f"Connection(id={self.id}, client_id={self.client_id!r}, lanes={sorted(self.lanes)})"


@dataclass
class _Group:
    """The connections of one client id, and which of them holds each repository."""

    client_id: str
    context: LaneContext
    connections: list[Connection] = field(default_factory=list)
    #: repository → the connection whose lane serves it (``holders[r].lanes[r]``)
    holders: dict[str, Connection] = field(default_factory=dict)
    #: repository → what this process knows of its cursor and redeliveries, across the lanes that served it
    progress: dict[str, Progress] = field(default_factory=dict)

    def lane(self, repository_id: str) -> Lane | None:
        """The lane that serves ``repository_id``, if any."""
        holder = self.holders.get(repository_id)
        return None if holder is None else holder.lanes.get(repository_id)

    def rebalance(self) -> None:
        """Give every wanted repository a lane, on the connection with the fewest, and move a lane from a
        connection that holds two more than another. A lane that hands off at once is taken away here, and the
        balance is looked at again; the others are once they report that they are done (:meth:`_handed_off`)."""
        while self._rebalance_once():
            pass

    def _rebalance_once(self) -> bool:
        """One pass over the wanted repositories; True if it took a lane away (the counts changed)."""
        wanted = dict.fromkeys(r for c in self.connections for r in c.wanted)
        for repository_id in wanted:
            candidates = [c for c in self.connections if repository_id in c.wanted]
            target = min(candidates, key=lambda c: len(c.lanes))
            holder = self.holders.get(repository_id)
            if holder is None:
                self._start_lane(target, repository_id)
                continue
            lane = holder.lanes[repository_id]
            if not lane.handing_off and len(holder.lanes) - len(target.lanes) >= 2:
                logger.info(
                    "client %s: moving repository %s from connection %d to connection %d",
                    self.client_id,
                    repository_id,
                    holder.id,
                    target.id,
                )
                if lane.hand_off():
                    self._take_away(holder, lane)
                    return True
        return False

    def _start_lane(self, connection: Connection, repository_id: str) -> None:
        progress = self.progress.setdefault(repository_id, Progress())
        lane = Lane(self.client_id, repository_id, self.context, connection, progress, self._handed_off)
        self.holders[repository_id] = connection
        connection.lanes[repository_id] = lane
        lane.start()
        connection.announce()

    def _handed_off(self, lane: Lane) -> None:
        """A lane asked to hand off is done: take it away, and give its repository to another connection."""
        holder = self.holders.get(lane.repository_id)
        if holder is None or holder.lanes.get(lane.repository_id) is not lane:
            return  # taken away already (its connection left meanwhile)
        self._take_away(holder, lane)
        self.rebalance()

    def _take_away(self, connection: Connection, lane: Lane) -> None:
        """Take a lane away from its connection; its unacknowledged events go to the next holder."""
        del self.holders[lane.repository_id]
        del connection.lanes[lane.repository_id]
        lane.cancel()
        connection.announce()

    def remove(self, connection: Connection) -> list[Lane]:
        """The connection left: its lanes, no longer holders, to be stopped."""
        self.connections.remove(connection)
        lanes = list(connection.lanes.values())
        for repository_id in connection.lanes:
            self.holders.pop(repository_id, None)
        connection.lanes.clear()
        return lanes

    def cursors(self) -> dict[str, int]:
        """Repository → cursor, of the repositories a lane here started on."""
        return {r: p.cursor for r, p in self.progress.items() if p.cursor is not None}


class Dispatcher:
    """Connections of the acknowledged stream, grouped by client id."""

    def __init__(self, store: EventStore, window: Window = DEFAULT_WINDOW) -> None:
        self.store = store
        self.cursor_writer = CursorWriter(store)
        self._lanes = LaneContext(store, self.cursor_writer, window)
        self._groups: dict[str, _Group] = {}
        #: replays that other replicas were asked for, being sent here
        self._replaying: set[asyncio.Task[None]] = set()
        #: connections that left, still stopping their lanes (see disconnect)
        self._disconnecting: set[asyncio.Future[None]] = set()
        store.on_replays(self._replays_requested)

    def connect(self, client_id: str, repository_ids: list[str], peer: str = "") -> Connection:
        connection = Connection(client_id, repository_ids, peer)
        group = self._groups.setdefault(client_id, _Group(client_id, self._lanes))
        group.connections.append(connection)
        logger.info(
            "client %s: connection %d subscribed to %s (%d connections)",
            client_id,
            connection.id,
            ",".join(connection.wanted),
            len(group.connections),
        )
        group.rebalance()
        if not connection.lanes:
            # Say so at once even when the other connections of this client id keep every repository.
            connection.announce()
        return connection

    def extend(self, connection: Connection, repository_ids: list[str]) -> None:
        """The connection wants more repositories (owner/name subscriptions that resolved later)."""
        group = self._groups.get(connection.client_id)
        if group is None or connection not in group.connections:
            return
        connection.wanted = list(dict.fromkeys([*connection.wanted, *repository_ids]))
        logger.info(
            "client %s: connection %d now also wants %s", connection.client_id, connection.id, ",".join(repository_ids)
        )
        group.rebalance()

    async def disconnect(self, connection: Connection) -> None:
        """The connection left: stop its lanes and give its repositories to the other connections of its client
        id. Runs to the end also when the caller is cancelled (gRPC cancels the handler of a stream its client
        cancelled, maybe while this runs): that cancellation goes on, the hand-over is not skipped."""
        task = asyncio.ensure_future(self._disconnect(connection))
        self._disconnecting.add(task)
        task.add_done_callback(self._disconnecting.discard)
        await asyncio.shield(task)

    async def wait_disconnected(self) -> None:
        """Until the connections that left are done handing over (server shutdown: before the last writes)."""
        if self._disconnecting:
            await asyncio.gather(*self._disconnecting, return_exceptions=True)

    async def _disconnect(self, connection: Connection) -> None:
        group = self._groups.get(connection.client_id)
        if group is None or connection not in group.connections:
            return
        lanes = group.remove(connection)
        await asyncio.gather(*(lane.stop() for lane in lanes))
        unacknowledged = sum(len(lane.inflight) for lane in lanes)
        logger.info(
            "client %s: connection %d left with %d unacknowledged events (%d connections remain)",
            connection.client_id,
            connection.id,
            unacknowledged,
            len(group.connections),
        )
        if group.connections:
            group.rebalance()
        else:
            del self._groups[connection.client_id]

    async def settle(
        self, connection: Connection, repository_id: str, sequence: int, failure: tuple[str, int] | None = None
    ) -> bool:
        """An acknowledgement, or with ``failure`` (reason, status) a dead letter. False if unknown."""
        lane = connection.lanes.get(repository_id)
        if lane is None or not lane.awaits(sequence):
            logger.warning(
                "client %s: connection %d settled %s#%d, which it does not hold",
                connection.client_id,
                connection.id,
                repository_id,
                sequence,
            )
            return False
        return await lane.settle(sequence, failure)

    async def replay(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        """Send settled events to ``client_id`` again: at once if a connection serves the repository, else
        when one does (the request stays in the store until the replay is settled)."""
        await self.store.add_replays(client_id, repository_id, sequences)
        group = self._groups.get(client_id)
        lane = group.lane(repository_id) if group else None
        if lane is not None and lane.holding:
            await lane.send_replays(sequences)

    def _replays_requested(self, client_id: str, repository_id: str) -> None:
        """Another replica was asked to replay events: send them if a connection here serves the repository."""
        group = self._groups.get(client_id)
        lane = group.lane(repository_id) if group else None
        if lane is None or not lane.holding:
            return

        async def send() -> None:
            try:
                await lane.send_replays(await self.store.replays(client_id, repository_id))
            except StoreError as exc:  # still in the store: sent when the lane starts again
                logger.warning("client %s: cannot send the replays of %s now: %s", client_id, repository_id, exc)

        task = asyncio.create_task(send(), name=f"replays {client_id}/{repository_id}")
        self._replaying.add(task)
        task.add_done_callback(self._replaying.discard)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        for group in self._groups.values():
            for connection in group.connections:
                connection.close()

    def cursors(self) -> dict[tuple[str, str], int]:
        """(client id, repository) → cursor, of every client id with a connection here (the store's are
        written behind these)."""
        return {(g.client_id, r): cursor for g in self._groups.values() for r, cursor in g.cursors().items()}

    def connections(self) -> list[ConnectionState]:
        """Every open connection of this process, with its lanes, by client id and then in connection order."""
        states = []
        for client_id, group in sorted(self._groups.items()):
            for connection in group.connections:
                lanes = tuple(
                    LaneState(
                        repository_id,
                        group.progress[repository_id].cursor if repository_id in group.progress else None,
                        len(lane.inflight),
                        lane.standby,
                    )
                    for repository_id, lane in sorted(connection.lanes.items())
                )
                states.append(
                    ConnectionState(
                        connection.id,
                        client_id,
                        connection.peer,
                        connection.connected_at_ns,
                        tuple(connection.wanted),
                        lanes,
                    )
                )
        return states

    def connection_count(self, client_id: str | None = None) -> int:
        """Open connections, of every client id or of one."""
        if client_id is not None:
            group = self._groups.get(client_id)
            return len(group.connections) if group else 0
        return sum(len(g.connections) for g in self._groups.values())
