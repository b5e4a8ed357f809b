"""The audit trail: which client id was sent, and which acknowledged or failed, which event, and when.

Recording is off the hot path: :meth:`AuditLog.record` only appends to a list; a background task writes
what gathered in one batch (for SQLite: one ``executemany`` that rides along with the next group commit,
without an fsync of its own). A crash may lose the last fraction of a second of audit records, never an
event or a cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.model import AuditAction, AuditRecord
from gitstafette.server.metrics import ServerMetrics
from gitstafette.store import EventStore

__all__ = ["AuditLog"]

logger = logging.getLogger(__name__)

#: How often gathered records are written, and how many make a write start at once.
FLUSH_INTERVAL_S = 0.25
FLUSH_BATCH = 1024


class AuditLog:
    """Gathers audit records and writes them to the store in batches.

    Run :meth:`run` as a task; :meth:`flush` writes what is pending (before the store closes, and before
    the audit trail is read, so a reader sees everything recorded until then).
    """

    def __init__(self, store: EventStore, metrics: ServerMetrics) -> None:
        self.store = store
        #: each record also counts in the metrics: sent → streamed, acknowledged, failed → dead letters
        self._count = metrics.count_audit
        self._pending: list[AuditRecord] = []
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def record(self, client_id: str, repository_id: str, sequence: int, action: AuditAction) -> None:
        self._pending.append(AuditRecord(client_id, repository_id, sequence, action, time.time_ns()))
        self._count(client_id, repository_id, action)
        if len(self._pending) >= FLUSH_BATCH:
            self._full.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._full.wait(), FLUSH_INTERVAL_S)
            except TimeoutError:
                pass
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        # One writer at a time, so records reach the store in the order they were recorded.
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self.store.add_audit(batch)
            except StoreUnavailable as exc:
                logger.warning("lost %d audit records: the store is unavailable: %s", len(batch), exc)
            except StoreError as exc:
                logger.error("lost %d audit records: the store failed: %s", len(batch), exc, exc_info=exc)

    def __repr__(self) -> str:
        return f"AuditLog(pending={len(self._pending)})"
