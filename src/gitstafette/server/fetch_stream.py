"""The original ``FetchWebhookEvents`` stream, once its RPC has checked the caller: a repository's committed
events from a cursor on, pushed as they arrive, heartbeats while idle, and the client id's cursor recorded as
it is sent past (the original contract has no acknowledgement).

It does not go through the dispatcher, whose contract it does not share: every stream gets every event, two
with one client id too (the dispatcher shares a client id's repositories among its connections and holds a
store lease for each); it starts where the client says, if it does, and an event counts as delivered once sent,
not once acknowledged; and it sends committed events only, never a replay, since its clients keep their own
cursor and its messages carry neither a sequence nor a replay flag. What the two streams share is shared: the event
messages (``stream_messages``), the start cursor (``EventStore.start_cursor``), the store retry (``STORE_RETRY``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.server.auth import Session
from gitstafette.server.lane import STORE_RETRY
from gitstafette.server.stream_messages import FetchResponses
from gitstafette.store import EventStore

__all__ = ["READ_LIMIT", "FetchStreams"]

logger = logging.getLogger(__name__)

#: Most events read from the store at a time (as many of them as fit go in one message).
READ_LIMIT = 100


class FetchStreams:
    """The delivery of ``FetchWebhookEvents`` streams: :meth:`stream` is one stream's.

    :param heartbeat_s: the longest a stream stays silent (an empty response keeps proxies from cutting it)
    :param revocable: streams end when their token is revoked (tokens are required)
    """

    def __init__(self, store: EventStore, responses: FetchResponses, heartbeat_s: float, revocable: bool) -> None:
        self.store = store
        self._responses = responses
        self.heartbeat_s = heartbeat_s
        self.revocable = revocable

    async def stream(
        self, session: Session, client_id: str, repository_id: str, after: int, deadline: float | None
    ) -> AsyncGenerator[pb.WebhookEventsResponse, None]:
        """The responses of one stream, of the events after ``after``, until ``deadline`` (monotonic; None: until
        the client leaves), the session ends or the store closes. A ``StoreError`` other than ``StoreUnavailable``
        (which it waits out) ends it."""
        store, responses = self.store, self._responses
        last_sent = time.monotonic()
        #: a cursor sent past but not yet recorded (the store was away when it was to be written)
        unsaved: int | None = None
        retrying = STORE_RETRY.retrying()
        while not store.closed and session.ended is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            try:
                if unsaved is not None:
                    # Counts as delivered once sent: the original contract has no acknowledgement.
                    await store.set_cursor(client_id, repository_id, unsaved)
                    unsaved = None
                events = responses.fit_one_message(await store.read_after(repository_id, after, limit=READ_LIMIT))
            except StoreUnavailable as exc:
                # The stream stays open, with heartbeats: what it waits for is stored once the store is back.
                # (A StoreError will not pass by waiting: it ends the stream, see FetchWebhookEvents.)
                if retrying.failed():
                    logger.warning(
                        "FetchWebhookEvents: client %s cannot read repository %s (%s); retrying",
                        client_id,
                        repository_id,
                        exc,
                    )
                if now - last_sent >= self.heartbeat_s:
                    yield responses.heartbeat()
                    last_sent = time.monotonic()
                await retrying.pause(None if deadline is None else deadline - now)
                continue
            if retrying.succeeded():
                logger.info("FetchWebhookEvents: client %s, the store answers again", client_id)
            if events:
                yield responses.events(client_id, repository_id, events)
                after = unsaved = events[-1].sequence
                last_sent = time.monotonic()
                continue
            wait = self.heartbeat_s - (now - last_sent)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if wait <= 0:
                yield responses.heartbeat()
                last_sent = time.monotonic()
                continue
            await self._wait_for_events(session, repository_id, after, wait)
        await self._record_last(client_id, repository_id, unsaved)

    async def _wait_for_events(self, session: Session, repository_id: str, after: int, timeout: float) -> None:
        """Wait for an event after ``after``, the timeout, or the end of the caller's token."""
        if not self.revocable:
            await self.store.wait_for_events(repository_id, after, timeout=timeout)
            return
        waiters = [
            asyncio.ensure_future(self.store.wait_for_events(repository_id, after, timeout=timeout)),
            asyncio.ensure_future(session.revoked.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _record_last(self, client_id: str, repository_id: str, sequence: int | None) -> None:
        """Record the cursor a stream that ends was sent past, if it is not recorded yet (and the store is there)."""
        if sequence is None:
            return
        try:
            await self.store.set_cursor(client_id, repository_id, sequence)
        except StoreError as exc:
            logger.warning("FetchWebhookEvents: client %s, cursor %d not recorded: %s", client_id, sequence, exc)

    def __repr__(self) -> str:
        return f"FetchStreams(heartbeat_s={self.heartbeat_s}, revocable={self.revocable})"
