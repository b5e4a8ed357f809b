"""The acknowledged stream's cursors, written to the store behind the streams (see :class:`CursorWriter`)."""

from __future__ import annotations

import asyncio
import logging

from gitstafette.store import EventStore

__all__ = ["CursorWriter"]

logger = logging.getLogger(__name__)


class CursorWriter:
    """Writes the cursors that acknowledgements moved to the store, behind the streams: whatever moved while
    one write was in flight goes in the next, in one :meth:`EventStore.set_cursors` call for every client id
    and repository (a fan-out to many client ids acknowledged at once costs one store write, not one each)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        #: (client id, repository) → cursor, moved since the write in flight began
        self._moved: dict[tuple[str, str], int] = {}
        #: done once the write of ``_moved`` is done; None while nothing moved
        self._next: asyncio.Future[None] | None = None
        #: done once the write in flight is done
        self._writing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, client_id: str, repository_id: str, cursor: int) -> None:
        self._moved[(client_id, repository_id)] = cursor
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cursor writer")

    async def _run(self) -> None:
        try:
            while self._next is not None:
                moved, self._moved = self._moved, {}
                self._writing, self._next = self._next, None
                try:
                    await self.store.set_cursors(moved)
                except Exception:
                    logger.exception("cannot save %d cursors, e.g. %s", len(moved), next(iter(moved.items())))
                finally:
                    self._writing.set_result(None)
                    self._writing = None
        finally:
            self._task = None

    async def flush(self) -> None:
        """Wait until every cursor put so far is written (or failed to be)."""
        pending = self._next or self._writing
        if pending is not None:
            await asyncio.shield(pending)

    def __repr__(self) -> str:
        return f"CursorWriter(moved={len(self._moved)}, writing={self._writing is not None})"
