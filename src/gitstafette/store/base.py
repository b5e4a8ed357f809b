"""The store interface every backend implements, and the in-process wake-up used by the embedded ones."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple

from gitstafette.model import AuditRecord, DeadLetter, RepositoryState, WebhookEvent

__all__ = ["AppendResult", "EventStore", "Lease", "SequenceNotifier"]


class AppendResult(NamedTuple):
    #: the stored event, with its sequence (for a duplicate: the sequence it was first stored with)
    event: WebhookEvent
    #: False when the delivery was already stored
    created: bool


class SequenceNotifier:
    """Wakes the readers of a repository as soon as an event is stored: no polling timer.

    Each repository has a latest sequence and an ``asyncio.Event`` that is set and replaced whenever the
    sequence grows, so every waiter of that moment wakes up once.
    """

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._any = asyncio.Event()
        #: how many times any repository's sequence grew: what :meth:`wait_any` compares with
        self._changes = 0
        self.closed = False

    def close(self) -> None:
        """Wake every waiter for good: the store is shutting down."""
        self.closed = True
        for event in self._events.values():
            event.set()
        self._events.clear()
        self._any.set()

    def latest(self, repository_id: str) -> int:
        return self._latest.get(repository_id, 0)

    def advance(self, repository_id: str, sequence: int) -> None:
        if sequence <= self._latest.get(repository_id, 0):
            return
        self._latest[repository_id] = sequence
        event = self._events.pop(repository_id, None)
        if event is not None:
            event.set()
        self._changes += 1
        self._any.set()
        self._any = asyncio.Event()

    async def wait_beyond(self, repository_id: str, sequence: int, timeout: float | None) -> bool:
        """Wait until the repository has an event after ``sequence``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # A wake-up only says the sequence grew: it may still be at or below ``sequence``.
        while self._latest.get(repository_id, 0) <= sequence and not self.closed:
            event = self._events.get(repository_id)
            if event is None:
                event = self._events[repository_id] = asyncio.Event()
            try:
                await asyncio.wait_for(event.wait(), None if deadline is None else max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
        return self._latest.get(repository_id, 0) > sequence

    def changes(self) -> int:
        """A mark to give :meth:`wait_any`: taken *before* reading the store, so that an event stored while the
        read is under way wakes the wait that follows it instead of being missed by both."""
        return self._changes

    async def wait_any(self, timeout: float | None, since: int | None = None) -> bool:
        """Wait until any repository gets an event (after the mark ``since`` of :meth:`changes`, at once if
        one came since it was taken); False on timeout or once closed."""
        if self.closed:
            return False
        if since is not None and self._changes != since:
            return True
        try:
            await asyncio.wait_for(self._any.wait(), timeout)
        except TimeoutError:
            return False
        return not self.closed


class Lease:
    """The right to serve one (client id, repository) on one connection: one holder at a time.

    The dispatcher keeps one lane per (client id, repository) within a process. A store that several server
    processes share extends that rule across them (:meth:`EventStore.lease` of the Redis store); this base
    class is the in-process case: granted at once, never lost.
    """

    def __init__(self, client_id: str, repository_id: str, holder: str) -> None:
        self.client_id = client_id
        self.repository_id = repository_id
        #: who asks, for the logs (and, across processes, to tell holders apart)
        self.holder = holder
        #: set when a held lease is lost (it expired while the store was away, another holder took it):
        #: the holder must stop sending at once
        self.lost = asyncio.Event()
        #: set by :meth:`acquire` when another holder had the lease since this one last held it: what this
        #: one sent then is the other's business, and it goes on from the stored cursor
        self.held_elsewhere = False

    async def acquire(self) -> bool:
        """Take the lease if it is free (or already this holder's); False while another holder has it."""
        return True

    async def wait(self) -> None:
        """Wait until :meth:`acquire` may succeed: the holder released the lease, or it may have expired."""

    async def release(self) -> None:
        """Give the lease up, so that a waiting holder (on any replica) takes it at once."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client_id!r}, {self.repository_id!r}, holder={self.holder!r})"


class EventStore(ABC):
    """Events per repository, each with an increasing sequence, plus per-client cursors, dead letters and
    an audit trail (who was sent and who settled which event).

    A cursor is the highest sequence a client id has acknowledged for a repository; it only grows.
    Use as ``async with store:`` or call ``open()`` and ``aclose()``.
    """

    url: str = ""
    #: the backend's name (``memory``, ``sqlite``, ``redis``): for spans (``db.system``) and logs
    kind: str = ""

    def __init__(self) -> None:
        #: store-internal: the latest *committed* sequence of each repository, and its waiters
        #: (``wait_for_events``, ``wait_any``, ``start_cursor``); a backend advances it once an event is durable
        self.committed = SequenceNotifier()
        #: store-internal: the latest sequence the acknowledged stream may send (``wait_for_streamable``). The
        #: same notifier as ``committed``, except in a backend that streams an event while its commit is still
        #: in flight (SQLite): there it advances first, and ``committed`` catches up once the commit is done
        self.streamable = self.committed

    async def open(self) -> None:  # noqa: B027 (optional: a store with nothing to open keeps this)
        """Connect, create the schema if needed and load what the notifiers must know."""

    @abstractmethod
    async def aclose(self) -> None:
        """Finish pending writes and release every resource."""

    async def ping(self) -> None:  # noqa: B027 (optional: an in-process store is always there)
        """Raise ``StoreUnavailable`` when the store cannot serve requests."""

    @abstractmethod
    async def append(self, event: WebhookEvent) -> AppendResult:
        """Store ``event`` once per (repository, delivery id) and give it the next sequence.

        Returns only after the event is durable: a 201 may be sent then.
        """

    @abstractmethod
    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        """Up to ``limit`` events of a repository with a sequence above ``after_sequence``, in order."""

    @abstractmethod
    async def get_cursor(self, client_id: str, repository_id: str) -> int | None:
        """The highest sequence ``client_id`` acknowledged, or None for a client id never seen."""

    @abstractmethod
    async def set_cursor(self, client_id: str, repository_id: str, sequence: int) -> None:
        """Record that ``client_id`` is done with every event up to ``sequence`` (never moves back)."""

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        """:meth:`set_cursor` for many (client id, repository) → sequence at once; a backend that can writes
        them together (the dispatcher gathers the acknowledgements of all its streams into one call)."""
        for (client_id, repository_id), sequence in cursors.items():
            await self.set_cursor(client_id, repository_id, sequence)

    @abstractmethod
    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Record an event that a client gave up delivering."""

    @abstractmethod
    async def dead_letters(self, repository_id: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, of one repository or all."""

    @abstractmethod
    async def add_replays(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        """Ask for events to be sent to ``client_id`` again (replayed dead letters), until acknowledged."""

    @abstractmethod
    async def replays(self, client_id: str, repository_id: str) -> list[int]:
        """Sequences waiting to be replayed to ``client_id``, in order."""

    @abstractmethod
    async def settle_replay(self, client_id: str, repository_id: str, sequence: int, delivered: bool) -> None:
        """A replayed event was settled: forget the replay request, and when ``delivered`` its dead letter."""

    @abstractmethod
    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        """Record who was sent and who settled which events (a batch; a crash may lose the latest ones)."""

    @abstractmethod
    async def audit(self, repository_id: str, sequence: int | None = None) -> list[AuditRecord]:
        """The audit records of a repository's retained events (of the one event ``sequence`` only, when
        given: read without the others), by sequence and then in the order added. Records of pruned events
        go with them."""

    @abstractmethod
    async def repositories(self) -> list[RepositoryState]:
        """Every repository the store holds events or cursors for."""

    @abstractmethod
    async def prune(self, now_ns: int, retention_s: float, max_age_s: float) -> int:
        """Delete events acknowledged by every known client and older than ``retention_s``, and any event
        older than ``max_age_s``. Returns how many were deleted."""

    async def repository(self, repository_id: str) -> RepositoryState | None:
        for state in await self.repositories():
            if state.repository_id == repository_id:
                return state
        return None

    async def event_at(self, repository_id: str, sequence: int) -> WebhookEvent | None:
        """The event with this sequence, if it is still retained."""
        events = await self.read_after(repository_id, sequence - 1, limit=1)
        return events[0] if events and events[0].sequence == sequence else None

    async def resolve_repository(self, spec: str) -> str | None:
        """A repository id for ``spec`` (an id, or owner/name seen in a stored event)."""
        if spec.isdigit():
            return spec
        lower = spec.lower()
        for state in await self.repositories():
            if state.repository_name.lower() == lower:
                return state.repository_id
        return None

    async def start_cursor(self, client_id: str, repository_id: str) -> int:
        """Where a client id resumes: after its cursor, or before the oldest retained event when new.

        A new client id of a repository with no retained events starts after the sequence ``committed`` had
        *before* the store was read: an event committed while the reads are under way is then after the
        start, and read. (Taken after the reads, it could be that event's own sequence: never sent.)
        """
        latest = self.committed.latest(repository_id)
        cursor = await self.get_cursor(client_id, repository_id)
        if cursor is not None:
            return cursor
        state = await self.repository(repository_id)
        return state.first_sequence - 1 if state and state.event_count else latest

    def on_replays(self, listener: Callable[[str, str], None]) -> None:  # noqa: B027 (in-process stores: nothing)
        """Call ``listener(client id, repository id)`` when another server process sharing this store was asked
        to replay events (``add_replays``), so that the one serving that repository sends them. The in-process
        stores have no other process: they never call it."""

    def lease(self, client_id: str, repository_id: str, holder: str) -> Lease:
        """The lease a lane holds while it serves ``repository_id`` to ``client_id`` (see :class:`Lease`)."""
        return Lease(client_id, repository_id, holder)

    # ---- waiting for events: what the server needs of the notifiers -----------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`stop_waiters` ran: the loops that wait on this store end."""
        return self.committed.closed or self.streamable.closed

    def stop_waiters(self) -> None:
        """Wake every waiter (``wait_for_events``, ``wait_for_streamable``, ``wait_any``) for good: the server is
        shutting down. The store stays usable for the last writes until :meth:`aclose`."""
        self.committed.close()
        self.streamable.close()

    def changes(self) -> int:
        """A mark of the committed events so far, for :meth:`wait_any`: taken *before* reading the store, so that
        an event committed while the read is under way wakes the wait that follows it instead of being missed."""
        return self.committed.changes()

    async def wait_any(self, timeout: float | None, since: int | None = None) -> bool:
        """Wait until any repository gets a committed event (at once if one came after the mark ``since`` of
        :meth:`changes`); False on timeout or once the waiters are stopped."""
        return await self.committed.wait_any(timeout, since)

    async def wait_for_events(self, repository_id: str, after_sequence: int, timeout: float | None) -> bool:
        """Wait until the repository has a committed event after ``after_sequence``; False on timeout."""
        return await self.committed.wait_beyond(repository_id, after_sequence, timeout)

    async def read_streamable_after(
        self, repository_id: str, after_sequence: int, limit: int = 100
    ) -> list[WebhookEvent]:
        """What the acknowledged stream may send: ``read_after``, and in a backend that can, also events
        whose commit is still in flight, so that delivery overlaps the disk's flush.

        A backend that does this never gives a sequence twice while it runs, and never stores a cursor
        beyond its committed events: an event streamed and then lost in a crash leaves no cursor past it,
        so the sequence taken again after the restart is streamed too (the client tells the two apart by
        their delivery ids). The original ``FetchWebhookEvents``, whose clients keep the cursor themselves,
        reads committed events only.
        """
        return await self.read_after(repository_id, after_sequence, limit)

    async def wait_for_streamable(self, repository_id: str, after_sequence: int, timeout: float | None) -> bool:
        """Wait until ``read_streamable_after`` has an event after ``after_sequence``; False on timeout."""
        return await self.streamable.wait_beyond(repository_id, after_sequence, timeout)

    async def __aenter__(self) -> EventStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def prunable(
    received_at_ns: int, sequence: int, cursors: list[int], now_ns: int, retention_s: float, max_age_s: float
) -> bool:
    """Whether an event may go: too old, or acknowledged by every known client and past retention.

    An event no client has subscribed for yet is kept until ``max_age_s``: a client that arrives later
    starts at the oldest retained event and must still find it.
    """
    age_s = (now_ns - received_at_ns) / 1e9
    if age_s > max_age_s:
        return True
    return age_s > retention_s and bool(cursors) and min(cursors) >= sequence
