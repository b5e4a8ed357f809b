"""The SQLite store's writing side: one thread that commits whatever is queued in one transaction (group
commit), and one that checkpoints the WAL beside it.

Under load a single fsync makes a whole group of webhooks durable; a write's future is settled (in the
event loop it was queued from) only after the commit that holds it. The WAL is copied into the database
by the checkpointer, so no webhook's commit waits for a checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.store.sqlite import schema
from gitstafette.store.sqlite.errors import as_store_error

__all__ = ["CHECKPOINT_INTERVAL_S", "MAX_GROUP", "Checkpointer", "GroupCommitWriter", "Write"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest number of queued writes committed in one transaction.
MAX_GROUP = 512
#: The WAL is copied into the database by a thread of its own this often, not inside a webhook's commit.
CHECKPOINT_INTERVAL_S = 0.5


class Write:
    """One queued write: a function of the writer's connection, and where its result goes."""

    __slots__ = ("durable", "function", "future", "loop", "on_settled")

    def __init__(
        self,
        function: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        durable: bool,
        on_settled: Callable[[bool], None] | None = None,
    ) -> None:
        self.function = function
        self.loop = loop
        #: False for writes a crash may lose (a cursor: the events are just sent again)
        self.durable = durable
        #: told whether the write was committed, also when nobody awaits the future any more
        self.on_settled = on_settled
        self.future: asyncio.Future[Any] = loop.create_future()

    def settle(self, result: Any, error: BaseException | None) -> None:
        """Runs in the event loop."""
        if self.on_settled is not None:
            self.on_settled(error is None)
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _settle_all(group: list[Write], results: list[Any], error: BaseException | None) -> None:
    """Hand a committed group's results to the event loop: one wake-up per group, not per write."""
    loops = {write.loop for write in group}
    for loop in loops:

        def settle(loop: asyncio.AbstractEventLoop = loop) -> None:
            for write, result in zip(group, results, strict=True):
                if write.loop is loop:
                    write.settle(result, error)

        _call_in(loop, settle)


def _call_in(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # that loop is closed: nobody waits any more
        pass


class GroupCommitWriter:
    """The writer thread and its queue: every write of the store goes through it.

    :param durable_mode: the ``PRAGMA synchronous`` of a commit that holds a durable write (``FULL`` or
        ``NORMAL``); a group of non-durable writes only is committed with ``NORMAL``.
    """

    def __init__(self, durable_mode: str) -> None:
        self._durable_mode = durable_mode
        self._writes: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._synchronous_full = True

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (it stops only when the store closes)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, connection: sqlite3.Connection) -> None:
        """Commit the queued writes on ``connection`` (the writer's own, closed when it stops) from now on."""
        self._thread = threading.Thread(
            target=self._write_loop, args=(connection,), name="gitstafette-sqlite-write", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._thread is not None:
            self._writes.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def queue(
        self,
        function: Callable[[sqlite3.Connection], Any],
        durable: bool = True,
        on_settled: Callable[[bool], None] | None = None,
    ) -> Write:
        """Queue ``function`` to run in the next group commit; its result comes in the write's future."""
        if self._thread is None:
            raise StoreUnavailable("SQLite store is not open")
        write = Write(function, asyncio.get_running_loop(), durable, on_settled)
        self._writes.put(write)
        return write

    async def write(self, function: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run ``function`` in a group commit, and return its result once that commit is done."""
        result: T = await self.queue(function, durable).future
        return result

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        while True:
            first = self._writes.get()
            if first is None:
                break
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._commit(connection, group)
            if stop:
                break
        connection.close()

    def _commit(self, connection: sqlite3.Connection, group: list[Write]) -> None:
        results: list[Any] = []
        try:
            durable = any(write.durable for write in group)
            if durable != self._synchronous_full:
                # A group of cursor updates only need not wait for the disk; the next durable commit
                # syncs the log with them in it.
                connection.execute(f"PRAGMA synchronous={self._durable_mode if durable else 'NORMAL'}")
                self._synchronous_full = durable
            connection.execute("BEGIN IMMEDIATE")
            for write in group:
                results.append(write.function(connection))
            connection.execute("COMMIT")
        except Exception as exc:  # the writer thread must survive any failure of one group
            logger.error("SQLite commit of %d writes failed: %s", len(group), exc)
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            # A write function that is not SQLite's failure (a bug) is a fault too, never "try again".
            error = (
                as_store_error(exc, "write")
                if isinstance(exc, sqlite3.Error)
                else StoreError(f"SQLite write failed: {exc}")
            )
            error.__cause__ = exc  # as ``raise error from exc`` would: the log and Sentry show SQLite's error
            _settle_all(group, [None] * len(group), error)
            return
        _settle_all(group, results, None)


class Checkpointer:
    """Copies the WAL into the database every ``CHECKPOINT_INTERVAL_S`` from a thread of its own, and truncates
    it when stopped (the database's connections then use ``wal_autocheckpoint=0``)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._closing.clear()
        self._thread = threading.Thread(target=self._checkpoint_loop, name="gitstafette-sqlite-checkpoint", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._closing.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _checkpoint_loop(self) -> None:
        connection = schema.connect(self._path)
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL_S):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    logger.warning("SQLite checkpoint failed (retried): %s", exc)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            logger.warning("SQLite final checkpoint failed: %s", exc)
        finally:
            connection.close()
