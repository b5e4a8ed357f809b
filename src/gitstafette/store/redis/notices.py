"""Wake-up across replicas: the follower of the notices streams, which tells this store instance of the
appends, the leases given up and the replays asked for on any replica (the design is in the package's
docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gitstafette import constants
from gitstafette._runtime import Backoff
from gitstafette.store.base import SequenceNotifier
from gitstafette.store.redis.keys import Keys, text

__all__ = ["NoticesFollower"]

#: How soon the follower reconnects to a Redis that went away: 10 ms, doubling up to a cap.
_RECONNECT = Backoff(0.01, constants.REDIS_RECONNECT_MAX_S, jitter=False)

logger = logging.getLogger(__name__)


class NoticesFollower:
    """Feeds the notices of every replica (this one included) to this store instance.

    :param keys: the installation's key names (the notices streams and the counters).
    :param notifier: the store's ``committed`` notifier, advanced to each append noticed (in Redis, committed).
    :param instance: this store instance's name: the replays it asked for itself are not noticed again.
    :param url: the Redis URL (password masked), for the log.
    :param lease_released: called with (client id, repository id) when any replica gave that lease up.
    """

    def __init__(
        self,
        keys: Keys,
        notifier: SequenceNotifier,
        instance: str,
        url: str,
        lease_released: Callable[[str, str], None],
    ) -> None:
        self.keys = keys
        self.notifier = notifier
        self.instance = instance
        self.url = url
        self._lease_released = lease_released
        self._replay_listeners: list[Callable[[str, str], None]] = []
        self._following: asyncio.Task[None] | None = None
        self._closing = False

    def on_replays(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(client id, repository id)`` for the replays another replica was asked for."""
        self._replay_listeners.append(listener)

    def opening(self) -> None:
        """The store opens: follow again once :meth:`follow` is called."""
        self._closing = False

    def closing(self) -> None:
        """The store closes: stop following (errors from here on end the follower instead of a retry)."""
        self._closing = True

    def follow(self, listener: aioredis.Redis, streams: dict[str, bytes]) -> None:
        """Follow the notices streams from ``streams`` (as :meth:`catch_up` answered) on ``listener``."""
        self._following = asyncio.create_task(self._follow(listener, streams), name=f"follow {self.keys.notices}")

    async def stop(self, close_listener: Callable[[], Awaitable[None]]) -> None:
        """Stop the follower; ``close_listener`` closes its connection, which ends a blocking read at once."""
        following, self._following = self._following, None
        if following is not None:
            # Cancelling alone is not enough: redis-py can swallow a cancellation that lands while it connects,
            # and then block in the read. Closing the listener's connection ends a read at once, and
            # _closing then stops _follow; it is closed again until the reader has stopped.
            following.cancel()
            while not following.done():
                await close_listener()
                await asyncio.wait({following}, timeout=0.05)
            with contextlib.suppress(asyncio.CancelledError):
                await following

    async def catch_up(self, client: aioredis.Redis) -> dict[str, bytes]:
        """Advance the notifier to every repository's counter; returns the notice streams to follow, from where.

        The notices' end is read first: whatever is appended after it is read from the notices, whatever
        before it is covered by the counters read next. (A lease released meanwhile is found when it expires.)
        """
        streams = {}
        for key in (self.keys.notices, self.keys.lease_released, self.keys.replays_requested):
            last = await client.xrevrange(key, count=1)
            streams[key] = last[0][0] if last and isinstance(last[0][0], bytes) else b"0-0"
        repository_ids = sorted(text(r) for r in await client.smembers(self.keys.repositories))
        async with client.pipeline(transaction=False) as pipe:
            for repository_id in repository_ids:
                pipe.hget(self.keys.repository(repository_id), "last_sequence")
            counters = await pipe.execute()
        for repository_id, counter in zip(repository_ids, counters, strict=True):
            if counter is not None:
                self.notifier.advance(repository_id, int(counter))
        return streams

    async def _follow(self, listener: aioredis.Redis, streams: dict[str, bytes] | None) -> None:
        """Wake this process's readers for appends made by any replica (this one included), and its lanes
        standing by for leases that any replica gave up."""
        retrying = _RECONNECT.retrying()
        notices, released = self.keys.notices.encode(), self.keys.lease_released.encode()
        while not self._closing:
            try:
                if streams is None:
                    streams = await self.catch_up(listener)
                    if retrying.succeeded():
                        logger.info("Redis %s reachable again: following appends of every replica", self.url)
                # RESP2: [[stream, [(entry id, {field: value}), …]]], or None when the block ran out.
                answer: Any = await listener.xread(
                    cast(Any, streams), count=1000, block=constants.REDIS_NOTICES_BLOCK_MS
                )
                for stream, entries in answer or []:
                    for entry_id, fields in entries:
                        streams[text(stream)] = entry_id
                        if stream == notices:
                            self.notifier.advance(text(fields[b"repository_id"]), int(fields[b"sequence"]))
                        elif stream == released:
                            self._lease_released(text(fields[b"client_id"]), text(fields[b"repository_id"]))
                        elif text(fields[b"origin"]) != self.instance:  # this replica sent its own at once
                            for replays_requested in self._replay_listeners:
                                replays_requested(text(fields[b"client_id"]), text(fields[b"repository_id"]))
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                if retrying.failed():
                    logger.warning("Redis %s: lost the notices of appends (%s); reconnecting", self.url, exc)
                streams = None
                await retrying.pause()
