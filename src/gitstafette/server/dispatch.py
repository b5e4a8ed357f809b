"""Who gets which event on the acknowledged stream.

Each client id is a *group* of connections. Every repository the group wants is served by one
connection at a time, through a *lane* that sends the repository's events in sequence order and keeps
at most ``window`` of them unacknowledged. The group's cursor of a repository is the highest sequence
below which everything was acknowledged (or reported failed); it is what the store remembers, so a
lane that ends, for whatever reason, leaves its unacknowledged events to be sent again by the next.

Lanes are balanced between the connections of a group: a connection holding two lanes more than
another stops sending on one of them, and hands it over once all it sent there is acknowledged, so
order is kept across the handover.

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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gitstafette._runtime import Backoff
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.model import DeadLetter, WebhookEvent
from gitstafette.server.cursor_writer import CursorWriter
from gitstafette.store import EventStore, Lease

__all__ = ["AssignmentChanged", "Connection", "Dispatcher", "EndOfStream", "OutboxItem", "Outgoing"]

logger = logging.getLogger(__name__)

#: Most unacknowledged events per lane, and most unacknowledged body bytes (at least one event goes).
DEFAULT_WINDOW = 256
DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024

#: How long a stream waits before trying an unavailable store again: 0.1 s, doubling up to 2 s.
STORE_RETRY = Backoff(0.1, 2.0, jitter=False)

#: How long a lane's task may take to stop once cancelled before its lease is given up without it.
LANE_STOP_S = 5.0

_connection_ids = itertools.count(1)


def _stop_if_cancelled(where: str) -> None:
    """Raise CancelledError if the running task was cancelled and the cancellation did not arrive: a library
    call that swallows it (seen with a Redis read cancelled in flight) would leave a lane that was told to stop
    waiting for events forever, and its repository's lease held by nobody who serves it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        logger.warning("%s swallowed a cancellation of %s; stopping", where, task.get_name())
        raise asyncio.CancelledError


_lane_ids = itertools.count(1)


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


#: What the dispatcher hands a stream, in the order the stream sends it (grpc_service.StreamResponses turns
#: each into its protobuf message).
OutboxItem = Outgoing | AssignmentChanged | EndOfStream

_ASSIGNMENT_CHANGED = AssignmentChanged()
_END_OF_STREAM = EndOfStream()


@dataclass
class _InFlight:
    delivery_id: str
    size: int
    done: bool = False


class Lane:
    """One repository served on one connection."""

    def __init__(self, group: _Group, connection: Connection, repository_id: str) -> None:
        self.group = group
        self.connection = connection
        self.repository_id = repository_id
        self.inflight: OrderedDict[int, _InFlight] = OrderedDict()
        self.inflight_bytes = 0
        #: replayed events sent and not yet settled (outside the sequence order, below the cursor)
        self.replaying: dict[int, _InFlight] = {}
        self.handing_off = False
        #: waiting for the lease, which another connection (on another replica) holds
        self.standby = False
        #: holding the lease: events may be sent
        self.holding = False
        self.room = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._hold(), name=f"lane {self.group.client_id}/{self.repository_id}")
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A lane that fails (a bug, or a ``StoreError``; not a store that is away: that it waits out) ends its
        stream with an error the client sees, which then connects again; never a stream left open, heartbeats
        flowing, that nothing serves any more."""
        if task.cancelled() or task.exception() is None:
            return
        logger.error(
            "client %s: connection %d cannot serve repository %s any more; ending its stream",
            self.group.client_id,
            self.connection.id,
            self.repository_id,
            exc_info=task.exception(),
        )
        self.connection.fail(f"the server cannot serve repository {self.repository_id} on this stream; reconnect")

    async def _hold(self) -> None:
        """Serve while holding the lease of (client id, repository); stand by while another holder has it."""
        store = self.group.dispatcher.store
        holder = f"connection {self.connection.id} lane {next(_lane_ids)}"
        lease = store.lease(self.group.client_id, self.repository_id, holder)
        while not store.closed:
            tasks: list[asyncio.Task[Any]] = []
            try:
                await self._acquire(lease)
                if lease.held_elsewhere:
                    self._forget_sent()
                self.holding = True
                tasks = [
                    asyncio.create_task(self._run(), name=f"serving {self.group.client_id}/{self.repository_id}"),
                    asyncio.create_task(lease.lost.wait()),
                ]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.holding = False
                for task in tasks:
                    task.cancel()
                # Bounded: a task that does not stop when cancelled must not keep the lease from the next holder.
                _, stuck = await asyncio.wait(tasks, timeout=LANE_STOP_S) if tasks else (set(), set())
                if stuck:
                    logger.error(
                        "client %s: connection %d, the lane of repository %s did not stop within %gs of being "
                        "cancelled; its lease is given up anyway",
                        self.group.client_id,
                        self.connection.id,
                        self.repository_id,
                        LANE_STOP_S,
                    )
                # Also when cancelled: the next holder need not wait for the lease to expire.
                await asyncio.shield(self._release(lease))
            if not lease.lost.is_set():
                tasks[0].result()  # the store closed, or what broke the lane
                return
            logger.warning(
                "client %s: connection %d lost the lease of repository %s and stops sending until it has it again",
                self.group.client_id,
                self.connection.id,
                self.repository_id,
            )

    async def _release(self, lease: Lease) -> None:
        """Give the lease up once the acknowledgements so far are in the store: the next holder (on another
        replica perhaps) starts after them, instead of sending them again."""
        await self.group.dispatcher.cursor_writer.flush()
        await lease.release()

    def _forget_sent(self) -> None:
        """Another holder served the repository meanwhile: what this lane sent is not its own to settle any
        more, and it goes on from the store's cursor."""
        logger.info(
            "client %s: connection %d takes repository %s back from another holder; its %d unacknowledged events "
            "are sent again",
            self.group.client_id,
            self.connection.id,
            self.repository_id,
            len(self.inflight),
        )
        self.inflight.clear()
        self.inflight_bytes = 0
        self.replaying.clear()
        self.release_if_handed_off()

    async def _acquire(self, lease: Lease) -> None:
        if await lease.acquire():
            return
        logger.info(
            "client %s: connection %d stands by for repository %s, which another connection holds",
            self.group.client_id,
            self.connection.id,
            self.repository_id,
        )
        self.standby = True
        self.connection.announce()
        while not await lease.acquire():
            await lease.wait()
        self.standby = False
        self.connection.announce()

    async def _run(self) -> None:
        group, repository_id = self.group, self.repository_id
        store, window, window_bytes = group.dispatcher.store, group.dispatcher.window, group.dispatcher.window_bytes
        #: the last sequence sent; None until the lane has its start (the store may be away at first too)
        after: int | None = None
        retrying = STORE_RETRY.retrying()
        while not store.closed:
            try:
                if after is None:
                    # The store's cursor may be ahead (another replica served the repository meanwhile),
                    # this process's too (its last acknowledgement may still be on its way to the store).
                    stored = await store.start_cursor(group.client_id, repository_id)
                    start = group.cursors[repository_id] = max(group.cursors.get(repository_id, stored), stored)
                    logger.info(
                        "client %s: connection %d serves repository %s from sequence %d",
                        group.client_id,
                        self.connection.id,
                        repository_id,
                        start + 1,
                    )
                    await self.send_replays(await store.replays(group.client_id, repository_id))
                    _stop_if_cancelled("the lane's start")
                    # Still unacknowledged from before its lease was lost and taken back: go on after those.
                    after = next(reversed(self.inflight), start)
                room = window - len(self.inflight)
                if self.handing_off or room <= 0 or (self.inflight and self.inflight_bytes >= window_bytes):
                    self.room.clear()
                    await self.room.wait()
                    continue
                events = await store.read_streamable_after(repository_id, after, limit=room)
                _stop_if_cancelled("a read of the store")
                if retrying.succeeded():
                    logger.info("client %s: the store answers again; serving %s", group.client_id, repository_id)
                if not events:
                    await store.wait_for_streamable(repository_id, after, timeout=None)
                    continue
                # Sending and recording happen without an await in between, so a lane cancelled at any
                # await has recorded everything it sent.
                for event in events:
                    if self.handing_off or (self.inflight and self.inflight_bytes >= window_bytes):
                        break
                    self.inflight[event.sequence] = _InFlight(event.delivery_id, len(event.body))
                    self.inflight_bytes += len(event.body)
                    self.connection.send(event, group.redelivery(event))
                    after = event.sequence
            except StoreUnavailable as exc:
                # The stream stays open: what it waits for is stored once the store is back. (A StoreError will
                # not pass by waiting: it ends the lane, and _ended the stream, with an error.)
                if retrying.failed():
                    logger.warning(
                        "client %s: cannot read repository %s (%s); retrying", group.client_id, repository_id, exc
                    )
                await retrying.pause()

    @property
    def idle(self) -> bool:
        """Nothing sent on this lane waits for an answer."""
        return not self.inflight and not self.replaying

    async def send_replays(self, sequences: list[int]) -> None:
        """Send events again on request (dead letters being replayed), each once until settled."""
        store = self.group.dispatcher.store
        for sequence in sequences:
            if sequence in self.replaying:
                continue
            event = await store.event_at(self.repository_id, sequence)
            if event is None:
                logger.warning(
                    "client %s: cannot replay %s#%d, it is no longer retained",
                    self.group.client_id,
                    self.repository_id,
                    sequence,
                )
                await store.settle_replay(self.group.client_id, self.repository_id, sequence, delivered=False)
                continue
            self.replaying[sequence] = _InFlight(event.delivery_id, len(event.body))
            self.connection.send(event, self.group.redelivery(event), replay=True)

    def settle(self, sequence: int) -> bool:
        """Mark one sent event done; move the cursor over every done event at the front."""
        entry = self.inflight.get(sequence)
        if entry is None:
            return False
        entry.done = True
        cursor = None
        while self.inflight:
            first_sequence, first = next(iter(self.inflight.items()))
            if not first.done:
                break
            self.inflight.popitem(last=False)
            self.inflight_bytes -= first.size
            self.group.sent.pop((self.repository_id, first_sequence), None)
            cursor = first_sequence
        if cursor is not None:
            self.group.cursors[self.repository_id] = cursor
            self.group.dispatcher.cursor_writer.put(self.group.client_id, self.repository_id, cursor)
        self.room.set()
        self.release_if_handed_off()
        return True

    def release_if_handed_off(self) -> None:
        if self.handing_off and self.idle:
            self.group.release(self)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            # asyncio.wait, not ``await self.task``: the lane's CancelledError is its own, and only a
            # cancellation of the task stopping it may come out of here.
            await asyncio.wait([self.task])
        await self.group.dispatcher.cursor_writer.flush()


class Connection:
    """One acknowledged stream: what it wants, the lanes it holds, and its queue of messages to send."""

    def __init__(self, client_id: str, wanted: list[str]) -> None:
        self.id = next(_connection_ids)
        self.client_id = client_id
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
    dispatcher: Dispatcher
    client_id: str
    connections: list[Connection] = field(default_factory=list)
    holders: dict[str, Lane] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)
    #: (repository, sequence) → times sent before, for events sent and not yet acknowledged
    sent: dict[tuple[str, int], int] = field(default_factory=dict)

    def redelivery(self, event: WebhookEvent) -> int:
        key = (event.repository_id, event.sequence)
        count = self.sent.get(key, -1) + 1
        self.sent[key] = count
        return count

    def release(self, lane: Lane) -> None:
        """Take a lane away from its connection; its unacknowledged events go to the next holder."""
        if self.holders.get(lane.repository_id) is lane:
            del self.holders[lane.repository_id]
        lane.connection.lanes.pop(lane.repository_id, None)
        if lane.task is not None:
            lane.task.cancel()
        lane.connection.announce()
        self.rebalance()

    def rebalance(self) -> None:
        wanted = dict.fromkeys(r for c in self.connections for r in c.wanted)
        for repository_id in wanted:
            candidates = [c for c in self.connections if repository_id in c.wanted]
            target = min(candidates, key=lambda c: len(c.lanes))
            lane = self.holders.get(repository_id)
            if lane is None:
                lane = Lane(self, target, repository_id)
                self.holders[repository_id] = lane
                target.lanes[repository_id] = lane
                lane.start()
                target.announce()
            elif not lane.handing_off and len(lane.connection.lanes) - len(target.lanes) >= 2:
                logger.info(
                    "client %s: moving repository %s from connection %d to connection %d",
                    self.client_id,
                    repository_id,
                    lane.connection.id,
                    target.id,
                )
                lane.handing_off = True
                lane.room.set()
                if lane.idle:
                    self.release(lane)
                    return


class Dispatcher:
    """Connections of the acknowledged stream, grouped by client id."""

    def __init__(self, store: EventStore, window: int = DEFAULT_WINDOW, window_bytes: int = DEFAULT_WINDOW_BYTES):
        self.store = store
        self.window = window
        self.window_bytes = window_bytes
        self._groups: dict[str, _Group] = {}
        self.cursor_writer = CursorWriter(store)
        #: replays that other replicas were asked for, being sent here
        self._replaying: set[asyncio.Task[None]] = set()
        #: connections that left, still stopping their lanes (see disconnect)
        self._disconnecting: set[asyncio.Future[None]] = set()
        store.on_replays(self._replays_requested)

    def connect(self, client_id: str, repository_ids: list[str]) -> Connection:
        connection = Connection(client_id, repository_ids)
        group = self._groups.setdefault(client_id, _Group(self, client_id))
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
        group.connections.remove(connection)
        lanes = list(connection.lanes.values())
        for lane in lanes:
            group.holders.pop(lane.repository_id, None)
        connection.lanes.clear()
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
        entry = None if lane is None else lane.replaying.get(sequence) or lane.inflight.get(sequence)
        if lane is None or entry is None:
            logger.warning(
                "client %s: connection %d settled %s#%d, which it does not hold",
                connection.client_id,
                connection.id,
                repository_id,
                sequence,
            )
            return False
        if failure is not None:
            reason, status_code = failure
            letter = DeadLetter(
                connection.client_id, repository_id, sequence, entry.delivery_id, reason, status_code, time.time_ns()
            )
            await self.store.add_dead_letter(letter)
            logger.warning(
                "client %s: dead letter %s#%d (delivery %s, status %d): %s",
                connection.client_id,
                repository_id,
                sequence,
                entry.delivery_id,
                status_code,
                reason,
            )
        if lane.replaying.pop(sequence, None) is not None:
            lane.group.sent.pop((repository_id, sequence), None)
            await self.store.settle_replay(connection.client_id, repository_id, sequence, delivered=failure is None)
            logger.info("client %s: replay of %s#%d settled", connection.client_id, repository_id, sequence)
            lane.release_if_handed_off()
            return True
        return lane.settle(sequence)

    async def replay(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        """Send settled events to ``client_id`` again: at once if a connection serves the repository, else
        when one does (the request stays in the store until the replay is settled)."""
        await self.store.add_replays(client_id, repository_id, sequences)
        group = self._groups.get(client_id)
        lane = group.holders.get(repository_id) if group else None
        if lane is not None and lane.holding:
            await lane.send_replays(sequences)

    def _replays_requested(self, client_id: str, repository_id: str) -> None:
        """Another replica was asked to replay events: send them if a connection here serves the repository."""
        group = self._groups.get(client_id)
        lane = group.holders.get(repository_id) if group else None
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
        return {(g.client_id, r): cursor for g in self._groups.values() for r, cursor in g.cursors.items()}

    def connection_count(self, client_id: str | None = None) -> int:
        """Open connections, of every client id or of one."""
        if client_id is not None:
            group = self._groups.get(client_id)
            return len(group.connections) if group else 0
        return sum(len(g.connections) for g in self._groups.values())
