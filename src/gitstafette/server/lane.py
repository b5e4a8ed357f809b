"""One repository served to one client id on one connection: a :class:`Lane`.

A lane sends its repository's events in sequence order, keeps at most a :class:`Window` of them
unacknowledged, and moves the cursor over what was settled. It serves only while it holds the store's lease
of its (client id, repository); it gives the lease up once the acknowledgements so far are in the store.

A lane knows nothing of the other lanes or connections: it is handed, at construction, the store, its
window, where its events go (an :class:`Outlet`, its connection), what this process knows of its
repository's progress, and whom to tell once a hand-off the dispatcher asked for is done.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gitstafette._runtime import Backoff
from gitstafette.exceptions import StoreUnavailable
from gitstafette.model import DeadLetter, WebhookEvent
from gitstafette.server.cursor_writer import CursorWriter
from gitstafette.store import EventStore, Lease

__all__ = ["DEFAULT_WINDOW", "LANE_STOP_S", "STORE_RETRY", "Lane", "LaneContext", "Outlet", "Progress", "Window"]

logger = logging.getLogger(__name__)

#: How long a stream waits before trying an unavailable store again: 0.1 s, doubling up to 2 s.
STORE_RETRY = Backoff(0.1, 2.0, jitter=False)

#: How long a lane's task may take to stop once cancelled before its lease is given up without it.
LANE_STOP_S = 5.0

_lane_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Window:
    """How much a lane keeps unacknowledged: at most ``events`` events and ``body_bytes`` of their bodies
    (at least one event goes, whatever its size)."""

    events: int
    body_bytes: int


#: Most unacknowledged events per lane, and most unacknowledged body bytes.
DEFAULT_WINDOW = Window(events=256, body_bytes=32 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class LaneContext:
    """What every lane of a dispatcher shares."""

    store: EventStore
    cursor_writer: CursorWriter
    window: Window


class Outlet(Protocol):
    """Where a lane's events go, and what it tells its stream (the dispatcher's ``Connection``)."""

    @property
    def id(self) -> int: ...

    def send(self, event: WebhookEvent, redelivery: int, replay: bool = False) -> None: ...

    def announce(self) -> None:
        """The repositories served changed (the lane stands by, or serves again)."""

    def fail(self, reason: str) -> None:
        """End the stream with an error."""


@dataclass
class Progress:
    """What this process knows of one (client id, repository), across the lanes that serve it in turn."""

    #: the highest sequence below which everything was acknowledged (or failed); None until a lane started
    cursor: int | None = None
    #: sequence → times sent before, for events sent and not yet acknowledged
    sent: dict[int, int] = field(default_factory=dict)

    def redelivery(self, sequence: int) -> int:
        """Count one more sending of ``sequence``; how many went before it."""
        count = self.sent.get(sequence, -1) + 1
        self.sent[sequence] = count
        return count


def _stop_if_cancelled(where: str) -> None:
    """Raise CancelledError if the running task was cancelled and the cancellation did not arrive: a library
    call that swallows it (seen with a Redis read cancelled in flight) would leave a lane that was told to stop
    waiting for events forever, and its repository's lease held by nobody who serves it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        logger.warning("%s swallowed a cancellation of %s; stopping", where, task.get_name())
        raise asyncio.CancelledError


@dataclass
class _InFlight:
    delivery_id: str
    size: int
    done: bool = False


class Lane:
    """One repository served on one connection.

    :param context: the store, the cursor writer and the window, shared by every lane of the dispatcher
    :param outlet: the connection the lane's events go out on
    :param progress: the cursor and the redelivery counts of (client id, repository) in this process
    :param on_handed_off: called with the lane once a :meth:`hand_off` is done (all it sent is settled);
        the caller of ``hand_off`` is not called back for a lane that was done at once
    """

    def __init__(
        self,
        client_id: str,
        repository_id: str,
        context: LaneContext,
        outlet: Outlet,
        progress: Progress,
        on_handed_off: Callable[[Lane], None],
    ) -> None:
        self.client_id = client_id
        self.repository_id = repository_id
        self._store = context.store
        self._cursor_writer = context.cursor_writer
        self._window = context.window
        self._outlet = outlet
        self._progress = progress
        self._on_handed_off = on_handed_off
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
        self.task = asyncio.create_task(self._hold(), name=f"lane {self.client_id}/{self.repository_id}")
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A lane that fails (a bug, or a ``StoreError``; not a store that is away: that it waits out) ends its
        stream with an error the client sees, which then connects again; never a stream left open, heartbeats
        flowing, that nothing serves any more."""
        if task.cancelled() or task.exception() is None:
            return
        logger.error(
            "client %s: connection %d cannot serve repository %s any more; ending its stream",
            self.client_id,
            self._outlet.id,
            self.repository_id,
            exc_info=task.exception(),
        )
        self._outlet.fail(f"the server cannot serve repository {self.repository_id} on this stream; reconnect")

    async def _hold(self) -> None:
        """Serve while holding the lease of (client id, repository); stand by while another holder has it."""
        store = self._store
        holder = f"connection {self._outlet.id} lane {next(_lane_ids)}"
        lease = store.lease(self.client_id, self.repository_id, holder)
        while not store.closed:
            tasks: list[asyncio.Task[Any]] = []
            try:
                await self._acquire(lease)
                if lease.held_elsewhere:
                    self._forget_sent()
                self.holding = True
                tasks = [
                    asyncio.create_task(self._run(), name=f"serving {self.client_id}/{self.repository_id}"),
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
                        self.client_id,
                        self._outlet.id,
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
                self.client_id,
                self._outlet.id,
                self.repository_id,
            )

    async def _release(self, lease: Lease) -> None:
        """Give the lease up once the acknowledgements so far are in the store: the next holder (on another
        replica perhaps) starts after them, instead of sending them again."""
        await self._cursor_writer.flush()
        await lease.release()

    def _forget_sent(self) -> None:
        """Another holder served the repository meanwhile: what this lane sent is not its own to settle any
        more, and it goes on from the store's cursor."""
        logger.info(
            "client %s: connection %d takes repository %s back from another holder; its %d unacknowledged events "
            "are sent again",
            self.client_id,
            self._outlet.id,
            self.repository_id,
            len(self.inflight),
        )
        self.inflight.clear()
        self.inflight_bytes = 0
        self.replaying.clear()
        self._report_if_handed_off()

    async def _acquire(self, lease: Lease) -> None:
        if await lease.acquire():
            return
        logger.info(
            "client %s: connection %d stands by for repository %s, which another connection holds",
            self.client_id,
            self._outlet.id,
            self.repository_id,
        )
        self.standby = True
        self._outlet.announce()
        while not await lease.acquire():
            await lease.wait()
        self.standby = False
        self._outlet.announce()

    async def _run(self) -> None:
        store, progress, window = self._store, self._progress, self._window
        #: the last sequence sent; None until the lane has its start (the store may be away at first too)
        after: int | None = None
        retrying = STORE_RETRY.retrying()
        while not store.closed:
            try:
                if after is None:
                    # The store's cursor may be ahead (another replica served the repository meanwhile),
                    # this process's too (its last acknowledgement may still be on its way to the store).
                    stored = await store.start_cursor(self.client_id, self.repository_id)
                    start = progress.cursor = stored if progress.cursor is None else max(progress.cursor, stored)
                    logger.info(
                        "client %s: connection %d serves repository %s from sequence %d",
                        self.client_id,
                        self._outlet.id,
                        self.repository_id,
                        start + 1,
                    )
                    await self.send_replays(await store.replays(self.client_id, self.repository_id))
                    _stop_if_cancelled("the lane's start")
                    # Still unacknowledged from before its lease was lost and taken back: go on after those.
                    after = next(reversed(self.inflight), start)
                room = window.events - len(self.inflight)
                if self.handing_off or room <= 0 or self._window_full():
                    self.room.clear()
                    await self.room.wait()
                    continue
                events = await store.read_streamable_after(self.repository_id, after, limit=room)
                _stop_if_cancelled("a read of the store")
                if retrying.succeeded():
                    logger.info("client %s: the store answers again; serving %s", self.client_id, self.repository_id)
                if not events:
                    await store.wait_for_streamable(self.repository_id, after, timeout=None)
                    continue
                # Sending and recording happen without an await in between, so a lane cancelled at any
                # await has recorded everything it sent.
                for event in events:
                    if self.handing_off or self._window_full():
                        break
                    self.inflight[event.sequence] = _InFlight(event.delivery_id, len(event.body))
                    self.inflight_bytes += len(event.body)
                    self._outlet.send(event, progress.redelivery(event.sequence))
                    after = event.sequence
            except StoreUnavailable as exc:
                # The stream stays open: what it waits for is stored once the store is back. (A StoreError will
                # not pass by waiting: it ends the lane, and _ended the stream, with an error.)
                if retrying.failed():
                    logger.warning(
                        "client %s: cannot read repository %s (%s); retrying", self.client_id, self.repository_id, exc
                    )
                await retrying.pause()

    def _window_full(self) -> bool:
        """The unacknowledged bodies fill the window's bytes (never with nothing in flight: one event goes)."""
        return bool(self.inflight) and self.inflight_bytes >= self._window.body_bytes

    @property
    def idle(self) -> bool:
        """Nothing sent on this lane waits for an answer."""
        return not self.inflight and not self.replaying

    async def send_replays(self, sequences: list[int]) -> None:
        """Send events again on request (dead letters being replayed), each once until settled."""
        store = self._store
        for sequence in sequences:
            if sequence in self.replaying:
                continue
            event = await store.event_at(self.repository_id, sequence)
            if event is None:
                logger.warning(
                    "client %s: cannot replay %s#%d, it is no longer retained",
                    self.client_id,
                    self.repository_id,
                    sequence,
                )
                await store.settle_replay(self.client_id, self.repository_id, sequence, delivered=False)
                continue
            self.replaying[sequence] = _InFlight(event.delivery_id, len(event.body))
            self._outlet.send(event, self._progress.redelivery(sequence), replay=True)

    def awaits(self, sequence: int) -> bool:
        """``sequence`` was sent on this lane and waits for its answer."""
        return sequence in self.replaying or sequence in self.inflight

    async def settle(self, sequence: int, failure: tuple[str, int] | None = None) -> bool:
        """An acknowledgement of ``sequence``, or with ``failure`` (reason, status) a dead letter. False if the
        lane does not (or, once the dead letter is stored, no longer) wait for its answer."""
        entry = self.replaying.get(sequence) or self.inflight.get(sequence)
        if entry is None:
            return False
        if failure is not None:
            reason, status_code = failure
            letter = DeadLetter(
                self.client_id, self.repository_id, sequence, entry.delivery_id, reason, status_code, time.time_ns()
            )
            await self._store.add_dead_letter(letter)
            logger.warning(
                "client %s: dead letter %s#%d (delivery %s, status %d): %s",
                self.client_id,
                self.repository_id,
                sequence,
                entry.delivery_id,
                status_code,
                reason,
            )
        if self.replaying.pop(sequence, None) is not None:
            self._progress.sent.pop(sequence, None)
            await self._store.settle_replay(self.client_id, self.repository_id, sequence, delivered=failure is None)
            logger.info("client %s: replay of %s#%d settled", self.client_id, self.repository_id, sequence)
            self._report_if_handed_off()
            return True
        return self._settle_sent(sequence)

    def _settle_sent(self, sequence: int) -> bool:
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
            self._progress.sent.pop(first_sequence, None)
            cursor = first_sequence
        if cursor is not None:
            self._progress.cursor = cursor
            self._cursor_writer.put(self.client_id, self.repository_id, cursor)
        self.room.set()
        self._report_if_handed_off()
        return True

    def hand_off(self) -> bool:
        """Stop sending, to be taken away once everything sent is settled (then ``on_handed_off`` is called).
        True if that is so already: the caller takes the lane away now, and is not called back."""
        self.handing_off = True
        self.room.set()
        return self.idle

    def _report_if_handed_off(self) -> None:
        if self.handing_off and self.idle:
            self._on_handed_off(self)

    def cancel(self) -> None:
        """Stop without waiting (a lane handed off: nothing it sent waits for an answer)."""
        if self.task is not None:
            self.task.cancel()

    async def stop(self) -> None:
        """Stop, and wait until its task ended and the cursors it moved are written."""
        if self.task is not None:
            self.task.cancel()
            # asyncio.wait, not ``await self.task``: the lane's CancelledError is its own, and only a
            # cancellation of the task stopping it may come out of here.
            await asyncio.wait([self.task])
        await self._cursor_writer.flush()

    def __repr__(self) -> str:
        return (
            f"Lane(client_id={self.client_id!r}, repository_id={self.repository_id!r}, connection={self._outlet.id}, "
            f"inflight={len(self.inflight)}, handing_off={self.handing_off}, standby={self.standby})"
        )
