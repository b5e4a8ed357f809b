"""The embedded default store: one SQLite file in WAL mode.

Every write goes through one writer thread that commits whatever is queued in one transaction (group
commit): under load a single fsync makes a whole group of webhooks durable, and ``append`` returns only
after the commit that holds its event, so a 201 is never sent for an event a crash could lose.
Reads use their own connections (WAL lets them run beside the writer).

The acknowledged stream waits for neither the insert nor the fsync: ``append`` gives the event its
sequence in the event loop, hands it to the streams (``read_streamable_after``) and only then queues its
insert, so the delivery to the target overlaps the writer's work and the disk's flush. Whether a delivery
is stored already is answered by a Bloom filter of the stored deliveries, which never misses one, so only
a possible repeat (about 1 in 100 new deliveries, and the real repeats) costs a lookup in the file.

What keeps streaming before the commit safe: a sequence is never given twice while the store runs (one
whose commit failed stays unused), and a cursor is never stored beyond the repository's committed events,
so an event streamed and then lost in a crash cannot make its successor look acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any, Literal, TypeVar

from gitstafette.exceptions import StoreUnavailable
from gitstafette.model import AuditRecord, DeadLetter, RepositoryState, WebhookEvent
from gitstafette.store.base import AppendResult, EventStore, SequenceNotifier, prunable
from gitstafette.store.sqlite import schema
from gitstafette.store.sqlite.deliveries import StoredDeliveries
from gitstafette.store.sqlite.errors import as_store_error
from gitstafette.store.sqlite.writer import Checkpointer, GroupCommitWriter

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Recently stored events kept in memory, so an open stream gets a new event without reading it back.
RECENT_EVENTS = 4096
RECENT_BYTES = 32 * 1024 * 1024


class _RecentEvents:
    """The newest committed events, oldest first, within a count and a byte budget."""

    def __init__(self, max_events: int = RECENT_EVENTS, max_bytes: int = RECENT_BYTES) -> None:
        self._events: OrderedDict[tuple[str, int], WebhookEvent] = OrderedDict()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes

    def add(self, event: WebhookEvent) -> None:
        self._events[(event.repository_id, event.sequence)] = event
        self._bytes += len(event.body)
        while self._events and (len(self._events) > self._max_events or self._bytes > self._max_bytes):
            _, dropped = self._events.popitem(last=False)
            self._bytes -= len(dropped.body)

    def after(
        self, repository_id: str, after_sequence: int, limit: int, up_to: int | None = None
    ) -> list[WebhookEvent] | None:
        """The events after ``after_sequence`` up to the newest (or ``up_to``), if the first of them is
        held; else None."""
        found: list[WebhookEvent] = []
        if up_to is not None:
            limit = min(limit, up_to - after_sequence)
        while len(found) < limit:
            event = self._events.get((repository_id, after_sequence + 1 + len(found)))
            if event is None:
                break
            found.append(event)
        return found or None

    def discard(self, events: list[WebhookEvent]) -> None:
        for event in events:
            dropped = self._events.pop((event.repository_id, event.sequence), None)
            if dropped is not None:
                self._bytes -= len(dropped.body)

    def forget(self, repository_id: str, up_to_sequence: int) -> None:
        for key in [k for k in self._events if k[0] == repository_id and k[1] <= up_to_sequence]:
            self._bytes -= len(self._events.pop(key).body)


class SQLiteStore(EventStore):
    kind = "sqlite"

    def __init__(self, path: str, synchronous: Literal["full", "normal"] = "full") -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}" + ("?synchronous=normal" if synchronous == "normal" else "")
        #: with "normal", commits are not fsynced: safe from a process crash, not from a power cut
        self._durable_mode = "FULL" if synchronous == "full" else "NORMAL"
        self._writer = GroupCommitWriter(self._durable_mode)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gitstafette-sqlite-read")
        self._local = threading.local()
        self._recent = _RecentEvents()
        self.streamable = SequenceNotifier()
        self._checkpointer = Checkpointer(path)
        # Owned by the event loop: sequences are given there, before the writer inserts the events.
        self._last_sequence: dict[str, int] = {}
        #: the appends whose commit is in flight, by (repository, delivery id): a copy of one sent again
        #: meanwhile waits for it instead of being stored twice
        self._storing: dict[tuple[str, str], tuple[WebhookEvent, asyncio.Future[Any]]] = {}
        #: the event loop's own connection, for the delivery-id lookup of ``append`` (an indexed read)
        self._lookup: sqlite3.Connection | None = None
        self._deliveries = StoredDeliveries((), 0)
        self._rebuilding: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        folder = Path(self.path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # alone, "File exists" would not say which file, nor what it is in the way of
            raise StoreUnavailable(
                f"cannot open SQLite store {self.path}: cannot create {folder}: {exc.strerror}"
            ) from exc
        try:
            connection = schema.connect(self.path)
            connection.executescript(schema.SCHEMA)
            rows = connection.execute("SELECT repository_id, last_sequence FROM repositories").fetchall()
            self._deliveries = StoredDeliveries.read(connection)
        except sqlite3.Error as exc:
            # Locked or on a disk that fails: may pass (StoreUnavailable); not a database, corrupt: will not.
            error = as_store_error(exc, f"opening {self.path}")
            raise type(error)(f"cannot open SQLite store {self.path}: {exc}") from exc
        self._last_sequence = {repository_id: last for repository_id, last in rows}
        for repository_id, last in rows:
            self.committed.advance(repository_id, last)
            self.streamable.advance(repository_id, last)
        # Checkpoints run in their own thread (below), so no webhook's commit waits for one.
        connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute(f"PRAGMA synchronous={self._durable_mode}")
        self._writer.start(connection)
        self._lookup = schema.connect(self.path)
        self._checkpointer.start()
        logger.info("SQLite store %s open (%d repositories, %d events)", self.path, len(rows), self._deliveries.count)

    async def aclose(self) -> None:
        if self._rebuilding is not None:
            self._rebuilding.cancel()
            await asyncio.wait([self._rebuilding])
            self._rebuilding = None
        await self._writer.stop()
        await self._checkpointer.stop()
        self._readers.shutdown(wait=True)
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None

    async def ping(self) -> None:
        if not self._writer.alive:
            raise StoreUnavailable("SQLite writer is not running")
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # ---- writes ----------------------------------------------------------------------------------

    async def _write(self, function: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        result: T = await self._writer.queue(function, durable).future
        return result

    @staticmethod
    def _insert_in_writer(connection: sqlite3.Connection, event: WebhookEvent) -> int | None:
        """Insert the event; if its delivery is stored already (which ``append`` rules out), that copy's
        sequence, and nothing is written."""
        inserted = connection.execute(
            f"INSERT INTO events ({schema.EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (repository_id, delivery_id) DO NOTHING",
            (
                event.repository_id,
                event.sequence,
                event.delivery_id,
                event.event_type,
                event.repository_name,
                event.received_at_ns,
                json.dumps(event.headers),
                event.body,
            ),
        )
        if inserted.rowcount == 0:
            (existing,) = connection.execute(
                "SELECT sequence FROM events WHERE repository_id = ? AND delivery_id = ?",
                (event.repository_id, event.delivery_id),
            ).fetchone()
            return int(existing)
        connection.execute(
            "INSERT INTO repositories (repository_id, repository_name, last_sequence) VALUES (?, ?, ?) "
            "ON CONFLICT (repository_id) DO UPDATE SET last_sequence = excluded.last_sequence, "
            "repository_name = CASE WHEN excluded.repository_name = '' THEN repository_name "
            "ELSE excluded.repository_name END",
            (event.repository_id, event.repository_name, event.sequence),
        )
        return None

    def _stored_sequence(self, event: WebhookEvent) -> int | None:
        """The sequence a committed copy of this delivery has (an indexed read in the event loop)."""
        if self._lookup is None:
            raise StoreUnavailable("SQLite store is not open")
        try:
            row = self._lookup.execute(
                "SELECT sequence FROM events WHERE repository_id = ? AND delivery_id = ?",
                (event.repository_id, event.delivery_id),
            ).fetchone()
        except sqlite3.Error as exc:
            raise as_store_error(exc, "lookup") from exc
        return None if row is None else int(row[0])

    async def append(self, event: WebhookEvent) -> AppendResult:
        key = (event.repository_id, event.delivery_id)
        storing = self._storing.get(key)
        if storing is not None:  # sent again while its first copy is being stored: that one's sequence
            first, committed = storing
            await asyncio.shield(committed)
            return AppendResult(first, created=False)
        if key in self._deliveries:  # perhaps stored already: the file says
            existing = self._stored_sequence(event)
            if existing is not None:
                return AppendResult(event.with_sequence(existing), created=False)
        sequence = self._last_sequence.get(event.repository_id, 0) + 1
        stored = event.with_sequence(sequence)

        def settled(committed: bool) -> None:  # in the event loop, before the appending task resumes
            del self._storing[key]
            if committed:
                self.committed.advance(stored.repository_id, stored.sequence)
            else:
                self._recent.discard([stored])  # lost: the streams read the committed events instead

        write = self._writer.queue(functools.partial(self._insert_in_writer, event=stored), on_settled=settled)
        # Never given again in this process, even if its commit fails: it may have been streamed already.
        self._last_sequence[event.repository_id] = sequence
        self._storing[key] = (stored, write.future)
        self._deliveries.add(key)
        if self._deliveries.full and self._rebuilding is None:
            self._rebuilding = asyncio.create_task(self._rebuild_deliveries(), name="sqlite deliveries filter")
        # To the acknowledged streams now; the writer inserts and commits it meanwhile.
        self._recent.add(stored)
        self.streamable.advance(event.repository_id, sequence)
        existing = await write.future
        if existing is not None:  # cannot happen while the filter holds every stored delivery
            self._recent.discard([stored])
            logger.error("delivery %s was stored already as #%d; #%d stays unused", key, existing, sequence)
            return AppendResult(event.with_sequence(existing), created=False)
        return AppendResult(stored, created=True)

    async def _rebuild_deliveries(self) -> None:
        """Read the filter of stored deliveries afresh (pruned ones leave it), while appends go on."""
        current = self._deliveries
        # What the read may not see: the deliveries in flight now, and those added from now on.
        current.recorded = list(self._storing)
        try:
            fresh = await self._read(StoredDeliveries.read)
            fresh.update(current.recorded)
            self._deliveries = fresh
            logger.info("filter of stored deliveries rebuilt: %d deliveries, room for %d", fresh.count, fresh.capacity)
        except Exception:
            logger.exception("cannot rebuild the filter of stored deliveries; it stays as it is")
        finally:
            current.recorded = None
            self._rebuilding = None

    async def set_cursor(self, client_id: str, repository_id: str, sequence: int) -> None:
        await self.set_cursors({(client_id, repository_id): sequence})

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        rows = [
            (client_id, repository_id, sequence, repository_id)
            for (client_id, repository_id), sequence in cursors.items()
        ]
        repositories = [(repository_id,) for repository_id in {repository_id for _, repository_id in cursors}]

        def write(connection: sqlite3.Connection) -> None:
            # Never beyond the committed events: an acknowledgement of an event streamed before its commit
            # may come before a failed commit, or travel in a later group than the crash lets through.
            connection.executemany(
                "INSERT INTO cursors (client_id, repository_id, sequence) VALUES (?, ?, "
                "MIN(?, COALESCE((SELECT last_sequence FROM repositories WHERE repository_id = ?), 0))) "
                "ON CONFLICT (client_id, repository_id) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
                rows,
            )
            connection.executemany(
                "INSERT INTO repositories (repository_id) VALUES (?) ON CONFLICT DO NOTHING", repositories
            )

        if rows:
            await self._write(write, durable=False)

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        def write(connection: sqlite3.Connection) -> None:
            # The columns are DeadLetter's fields, in its order.
            connection.execute("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)", astuple(letter))

        await self._write(write)

    async def add_replays(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        rows = [(client_id, repository_id, sequence) for sequence in sequences]
        await self._write(lambda c: c.executemany("INSERT OR IGNORE INTO replays VALUES (?, ?, ?)", rows))

    async def settle_replay(self, client_id: str, repository_id: str, sequence: int, delivered: bool) -> None:
        def write(connection: sqlite3.Connection) -> None:
            key = (client_id, repository_id, sequence)
            connection.execute("DELETE FROM replays WHERE client_id = ? AND repository_id = ? AND sequence = ?", key)
            if delivered:
                connection.execute(
                    "DELETE FROM dead_letters WHERE client_id = ? AND repository_id = ? AND sequence = ?", key
                )

        await self._write(write)

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        rows = [(r.repository_id, r.sequence, r.client_id, r.action, r.at_ns) for r in records]
        if rows:
            # Not durable: an audit batch rides along with the next group commit, and costs no fsync of its own.
            await self._write(lambda c: c.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", rows), durable=False)

    async def audit(self, repository_id: str, sequence: int | None = None) -> list[AuditRecord]:
        # One event's records through the index audit_by_event, or the whole retained trail.
        one = "AND sequence = ? " if sequence is not None else ""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT client_id, repository_id, sequence, action, at_ns FROM audit WHERE repository_id = ? "
                "AND sequence >= COALESCE((SELECT MIN(sequence) FROM events WHERE repository_id = ?), "
                "(SELECT last_sequence + 1 FROM repositories WHERE repository_id = ?), 0) "
                f"{one}ORDER BY sequence, rowid",
                (repository_id, repository_id, repository_id, *(() if sequence is None else (sequence,))),
            ).fetchall()
        )
        return [AuditRecord(*row) for row in rows]

    async def replays(self, client_id: str, repository_id: str) -> list[int]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT sequence FROM replays WHERE client_id = ? AND repository_id = ? ORDER BY sequence",
                (client_id, repository_id),
            ).fetchall()
        )
        return [sequence for (sequence,) in rows]

    async def prune(self, now_ns: int, retention_s: float, max_age_s: float) -> int:
        pruned_up_to: dict[str, int] = {}

        def write(connection: sqlite3.Connection) -> int:
            pruned = 0
            repositories = [r for (r,) in connection.execute("SELECT repository_id FROM repositories")]
            for repository_id in repositories:
                cursors = [
                    s
                    for (s,) in connection.execute(
                        "SELECT sequence FROM cursors WHERE repository_id = ?", (repository_id,)
                    )
                ]
                rows = connection.execute(
                    "SELECT sequence, received_at_ns FROM events WHERE repository_id = ? ORDER BY sequence",
                    (repository_id,),
                )
                # Only a prefix may go, so that the retained sequences stay dense.
                upto = 0
                for sequence, received_at_ns in rows:
                    if not prunable(received_at_ns, sequence, cursors, now_ns, retention_s, max_age_s):
                        break
                    upto = sequence
                if upto:
                    cursor = connection.execute(
                        "DELETE FROM events WHERE repository_id = ? AND sequence <= ?", (repository_id, upto)
                    )
                    pruned += cursor.rowcount
                    connection.execute(
                        "DELETE FROM audit WHERE repository_id = ? AND sequence <= ?", (repository_id, upto)
                    )
                    pruned_up_to[repository_id] = upto
            return pruned

        pruned = await self._write(write)
        for repository_id, upto in pruned_up_to.items():
            self._recent.forget(repository_id, upto)
        return pruned

    # ---- reads -----------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = schema.connect(self.path)
        return connection

    async def _read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: function(self._reader()))
        except sqlite3.Error as exc:
            raise as_store_error(exc, "read") from exc

    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        committed = self.committed.latest(repository_id)
        if committed <= after_sequence:
            return []
        recent = self._recent.after(repository_id, after_sequence, limit, up_to=committed)
        if recent is not None:
            return recent
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {schema.EVENT_COLUMNS} FROM events WHERE repository_id = ? AND sequence > ? "
                "ORDER BY sequence LIMIT ?",
                (repository_id, after_sequence, limit),
            ).fetchall()
        )
        return [schema.row_to_event(row) for row in rows]

    async def read_streamable_after(
        self, repository_id: str, after_sequence: int, limit: int = 100
    ) -> list[WebhookEvent]:
        if self.streamable.latest(repository_id) <= after_sequence:
            return []
        recent = self._recent.after(repository_id, after_sequence, limit)
        if recent is not None:
            return recent
        # Not held in memory (older events, or the gap a failed commit left): the committed ones, once the
        # commit in flight is done.
        await self.committed.wait_beyond(repository_id, after_sequence, None)
        return await self.read_after(repository_id, after_sequence, limit)

    async def get_cursor(self, client_id: str, repository_id: str) -> int | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT sequence FROM cursors WHERE client_id = ? AND repository_id = ?", (client_id, repository_id)
            ).fetchone()
        )
        return None if row is None else int(row[0])

    async def dead_letters(self, repository_id: str | None = None) -> list[DeadLetter]:
        query = "SELECT * FROM dead_letters"
        params: tuple[str, ...] = ()
        if repository_id is not None:
            query += " WHERE repository_id = ?"
            params = (repository_id,)
        rows = await self._read(lambda c: c.execute(query + " ORDER BY failed_at_ns", params).fetchall())
        return [DeadLetter(*row) for row in rows]

    async def repositories(self) -> list[RepositoryState]:
        def read(connection: sqlite3.Connection) -> list[RepositoryState]:
            stats = {
                r: (n, first)
                for r, n, first in connection.execute(
                    "SELECT repository_id, COUNT(*), MIN(sequence) FROM events GROUP BY repository_id"
                )
            }
            cursors: dict[str, dict[str, int]] = {}
            for client_id, repository_id, sequence in connection.execute("SELECT * FROM cursors"):
                cursors.setdefault(repository_id, {})[client_id] = sequence
            states = []
            for repository_id, name, last in connection.execute(
                "SELECT repository_id, repository_name, last_sequence FROM repositories ORDER BY repository_id"
            ):
                count, first = stats.get(repository_id, (0, last + 1))
                states.append(RepositoryState(repository_id, name, count, first, last, cursors.get(repository_id, {})))
            return states

        return await self._read(read)
