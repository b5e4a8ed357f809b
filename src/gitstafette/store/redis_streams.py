"""The scale-out store: Redis Streams, shared by several server replicas.

Layout (key names in ``constants.py``, each after the configured prefix): one stream per repository whose
entry ids are ``<sequence>-0``, with the sequence taken from a per-repository counter, so sequences are
dense (1, 2, 3 …) and never reused, also after pruning. Appending is one Lua script: the delivery id is
looked up, the counter raised, the entry added and the delivery recorded atomically, so two replicas that
receive the same delivery store it once.

Wake-up across replicas: the append script also adds ``(repository, sequence)`` to a small notices stream,
and each store instance reads it with a blocking ``XREAD`` on a connection of its own, feeding the
in-process :class:`SequenceNotifier`. A reader on replica A so wakes within a millisecond of an append on
replica B, with no polling timer; unlike pub/sub, a reader whose connection drops loses nothing: it
re-reads the counters and goes on from the notices stream's end (see ``_follow_notices``).

Serving across replicas: while a connection serves a repository to a client id, its replica holds a lease
in Redis (``SET NX PX`` in a script, renewed every third of its ``?lease_ttl=``, given up when the
connection stops serving it); another replica's connection of that client id stands by, and takes over from
the last acknowledged event when the lease is given up (at once: a notice on the ``lease_released`` stream,
read with the append notices) or has expired (the holder died). Each new holder gets a higher fencing token.
A holder that cannot renew its lease stops sending before the lease can have expired in Redis.

Durability is Redis's own: with ``appendonly yes`` and ``appendfsync always`` an acknowledged append
survives a crash of Redis; with ``everysec`` up to a second may be lost. Redis errors are raised as
``StoreUnavailable`` (cannot reach it; try again) or ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import astuple
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gitstafette import constants
from gitstafette.config import RedisSettings
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.model import AuditRecord, DeadLetter, RepositoryState, WebhookEvent
from gitstafette.store.base import AppendResult, EventStore, Lease

__all__ = ["RedisStore"]

logger = logging.getLogger("gitstafette.store.redis")

# KEYS: repository hash, events, deliveries, received_at_ns, repositories, notices
# ARGV: repository id, delivery id, repository name, received_at_ns, event type, headers, body, notices maxlen
_APPEND = """
local known = redis.call('HGET', KEYS[3], ARGV[2])
if known then return {0, tonumber(known)} end
local sequence = redis.call('HINCRBY', KEYS[1], 'last_sequence', 1)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'name', ARGV[3]) end
redis.call('XADD', KEYS[2], sequence .. '-0', 'delivery_id', ARGV[2], 'event_type', ARGV[5],
    'repository_name', ARGV[3], 'received_at_ns', ARGV[4], 'headers', ARGV[6], 'body', ARGV[7])
redis.call('HSET', KEYS[3], ARGV[2], sequence)
redis.call('ZADD', KEYS[4], sequence, ARGV[4] .. ':' .. ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'repository_id', ARGV[1], 'sequence', sequence)
return {1, sequence}
"""

# KEYS: cursors, repositories; ARGV: client id, sequence, repository id
_SET_CURSOR = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[3])
"""

# KEYS: dead letters, dead letters by time; ARGV: field, member (a letter replaces the one of the same event)
_ADD_DEAD_LETTER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('ZREM', KEYS[2], old) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
"""

# KEYS: replays, dead letters, dead letters by time; ARGV: sequence, dead letter field, delivered (1/0)
_SETTLE_REPLAY = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
    local old = redis.call('HGET', KEYS[2], ARGV[2])
    if old then
        redis.call('ZREM', KEYS[3], old)
        redis.call('HDEL', KEYS[2], ARGV[2])
    end
end
"""

# KEYS: audit, repository hash; ARGV: sequence, record, sequence, record, …
# The counter keeps records of one sequence in the order they were added (members sort by it).
_ADD_AUDIT = """
local count = #ARGV / 2
local n = redis.call('HINCRBY', KEYS[2], 'audit_count', count) - count
for i = 1, #ARGV, 2 do
    n = n + 1
    redis.call('ZADD', KEYS[1], ARGV[i], string.format('%020d', n) .. ARGV[i + 1])
end
"""

# KEYS: events, received_at_ns, deliveries, cursors, audit
# ARGV: max-age cutoff ns, retention cutoff ns (events received before a cutoff are past it), batch
# Only a prefix goes, so retained sequences stay dense; the rule is base.prunable's. Times are compared
# as decimal strings: Lua numbers are doubles, exact only to 2^53, and nanosecond times are larger.
_PRUNE = """
local function before(a, b)
    if #a ~= #b then return #a < #b end
    return a < b
end
local min_cursor = nil
for _, value in ipairs(redis.call('HVALS', KEYS[4])) do
    local n = tonumber(value)
    if min_cursor == nil or n < min_cursor then min_cursor = n end
end
local upto = 0
local deliveries = {}
local page = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
for i = 1, #page, 2 do
    local received, delivery = string.match(page[i], '^(%d+):(.*)$')
    local sequence = tonumber(page[i + 1])
    local acknowledged = min_cursor ~= nil and min_cursor >= sequence
    if not (before(received, ARGV[1]) or (acknowledged and before(received, ARGV[2]))) then break end
    upto = sequence
    deliveries[#deliveries + 1] = delivery
end
if upto == 0 then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', (upto + 1) .. '-0')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', upto)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', upto)
for i = 1, #deliveries, 1000 do
    redis.call('HDEL', KEYS[3], unpack(deliveries, i, math.min(i + 999, #deliveries)))
end
return #deliveries
"""


# KEYS: lease, lease tokens; ARGV: client id, holder, ttl ms
# A holder asking again keeps its lease and token; a free lease goes to the asker with the next token.
# Answers {1, token, value} when granted, else {0, milliseconds until it expires, value}.
_ACQUIRE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
    local token, holder = string.match(current, '^(%d+) (.*)$')
    if holder ~= ARGV[2] then return {0, redis.call('PTTL', KEYS[1]), current} end
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {1, tonumber(token), current}
end
local token = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local value = token .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
return {1, token, value}
"""

# KEYS: lease; ARGV: value (token and holder), ttl ms
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, released notices; ARGV: holder, client id, repository id, notices maxlen
# By holder, not value: a holder that does not know whether its last acquire went through can still give up.
_RELEASE_LEASE = """
local current = redis.call('GET', KEYS[1])
if not current or string.match(current, '^%d+ (.*)$') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'client_id', ARGV[2], 'repository_id', ARGV[3])
return 1
"""


class _Keys:
    """The installation's key names: ``constants.REDIS_*_KEY`` after ``<prefix>:``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.repositories = self._key(constants.REDIS_REPOSITORIES_KEY)
        self.dead_letters = self._key(constants.REDIS_DEAD_LETTERS_KEY)
        self.dead_letters_by_time = self._key(constants.REDIS_DEAD_LETTERS_BY_FAILED_AT_NS_KEY)
        self.notices = self._key(constants.REDIS_NOTICES_KEY)
        self.lease_released = self._key(constants.REDIS_LEASE_RELEASED_KEY)
        self.replays_requested = self._key(constants.REDIS_REPLAYS_REQUESTED_KEY)

    def _key(self, template: str, **names: str) -> str:
        return f"{self.prefix}:{template.format(**names)}"

    def repository(self, repository_id: str) -> str:
        return self._key(constants.REDIS_REPOSITORY_KEY, repository_id=repository_id)

    def events(self, repository_id: str) -> str:
        return self._key(constants.REDIS_EVENTS_KEY, repository_id=repository_id)

    def deliveries(self, repository_id: str) -> str:
        return self._key(constants.REDIS_DELIVERIES_KEY, repository_id=repository_id)

    def received_at(self, repository_id: str) -> str:
        return self._key(constants.REDIS_RECEIVED_AT_NS_KEY, repository_id=repository_id)

    def cursors(self, repository_id: str) -> str:
        return self._key(constants.REDIS_CURSORS_KEY, repository_id=repository_id)

    def replays(self, repository_id: str, client_id: str) -> str:
        return self._key(constants.REDIS_REPLAYS_KEY, repository_id=repository_id, client_id=client_id)

    def audit(self, repository_id: str) -> str:
        return self._key(constants.REDIS_AUDIT_KEY, repository_id=repository_id)

    def lease(self, repository_id: str, client_id: str) -> str:
        return self._key(constants.REDIS_LEASE_KEY, repository_id=repository_id, client_id=client_id)

    def lease_tokens(self, repository_id: str) -> str:
        return self._key(constants.REDIS_LEASE_TOKENS_KEY, repository_id=repository_id)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _sequence_of(entry_id: bytes | str | None) -> int:
    """``b"42-0"`` → 42."""
    return int(_text(entry_id).partition("-")[0])


def _dead_letter_field(client_id: str, repository_id: str, sequence: int) -> str:
    return json.dumps([client_id, repository_id, sequence])


def _cutoff_ns(now_ns: int, age_s: float) -> str:
    """Events received before this (as a decimal string) are older than ``age_s`` at ``now_ns``.

    For integer nanoseconds, ``now - received > age_s * 1e9`` ⇔ ``received < now - floor(age_s * 1e9)``.
    """
    if not math.isfinite(age_s):
        return "0"
    return str(max(0, now_ns - math.floor(age_s * 1e9)))


class RedisStore(EventStore):
    """Events in Redis Streams (one per repository), cursors, dead letters, replays and audit in hashes and
    sorted sets; several server replicas may share it (same URL and prefix).

    :param settings: the Redis server and the key prefix (``RedisSettings.from_url``).
    """

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__()
        self.settings = settings
        self.url = str(settings)  # the password masked
        self.keys = _Keys(settings.prefix)
        #: names this store instance (this replica) as a lease holder, also for whoever reads the lease in Redis
        self.instance = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._redis: aioredis.Redis | None = None
        #: for what must fail fast when Redis hangs: appends (a POST waits for them), pings, leases
        self._quick: aioredis.Redis | None = None
        self._listener: aioredis.Redis | None = None
        #: the sentinels asked for the master, with a connection of their own to each (Sentinel only)
        self._sentinels: list[Sentinel] = []
        #: (client id, repository id) → woken when another holder gives that lease up
        self._lease_waiters: dict[tuple[str, str], asyncio.Event] = {}
        self._replay_listeners: list[Callable[[str, str], None]] = []
        #: leases this replica holds (or may: asked, no answer yet), given up when the store closes
        self._leases: set[_RedisLease] = set()
        self._following: asyncio.Task[None] | None = None
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------------

    def _client(self, socket_timeout_s: float, retries: int, retry_timeouts: bool = True) -> aioredis.Redis:
        settings = self.settings
        if settings.sentinels:
            # The master of the moment: asked of the sentinels on each new connection, so after a failover
            # the connections that fail (the old master is gone, or now read-only) are made again to the new one.
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(settings.sentinels),
                sentinel_kwargs={
                    "socket_timeout": constants.REDIS_INGEST_TIMEOUT_S,
                    "socket_connect_timeout": constants.REDIS_CONNECT_TIMEOUT_S,
                    "ssl": settings.tls,
                },
            )
            self._sentinels.append(sentinel)
            options = self._options(socket_timeout_s, retries, retry_timeouts)
            pool = SentinelConnectionPool(settings.service_name, sentinel, **options)  # type: ignore[no-untyped-call]
            return aioredis.Redis(connection_pool=pool, retry=options["retry"])
        return aioredis.Redis(
            host=settings.host, port=settings.port, **self._options(socket_timeout_s, retries, retry_timeouts)
        )

    def _options(self, socket_timeout_s: float, retries: int, retry_timeouts: bool) -> dict[str, Any]:
        settings = self.settings
        return dict(
            db=settings.database,
            username=settings.username,
            password=settings.password.reveal() if settings.password else None,
            ssl=settings.tls,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT_S,
            # One quick retry: a pooled connection that went stale while Redis restarted is replaced at once.
            # Appending is idempotent (the delivery id), so a retried append cannot store an event twice.
            # A timeout is not retried where it would only double the wait for a Redis that hangs.
            retry=Retry(
                ExponentialBackoff(cap=0.05, base=0.01),
                retries,
                (RedisConnectionError, RedisTimeoutError) if retry_timeouts else (RedisConnectionError,),
            )
            if retries
            else Retry(NoBackoff(), 0),
            health_check_interval=30,
            decode_responses=False,  # bodies are bytes
        )

    async def open(self) -> None:
        self._closing = False
        self._redis = self._client(constants.REDIS_SOCKET_TIMEOUT_S, retries=1)
        self._quick = self._client(constants.REDIS_INGEST_TIMEOUT_S, retries=1, retry_timeouts=False)
        # The blocking read of the notices needs a connection of its own, and a socket timeout beyond the block.
        # No retries: its errors must reach _follow_notices, which then re-reads what it may have missed.
        self._listener = self._client(
            constants.REDIS_NOTICES_BLOCK_MS / 1000 + constants.REDIS_SOCKET_TIMEOUT_S, retries=0
        )
        self._append_script = self._redis.register_script(_APPEND)
        self._appender = _AppendBatcher(self)
        self._set_cursor_script = self._redis.register_script(_SET_CURSOR)
        self._add_dead_letter_script = self._redis.register_script(_ADD_DEAD_LETTER)
        self._settle_replay_script = self._redis.register_script(_SETTLE_REPLAY)
        self._add_audit_script = self._redis.register_script(_ADD_AUDIT)
        self._prune_script = self._redis.register_script(_PRUNE)
        self._acquire_lease_script = self._redis.register_script(_ACQUIRE_LEASE)
        self._renew_lease_script = self._redis.register_script(_RENEW_LEASE)
        self._release_lease_script = self._redis.register_script(_RELEASE_LEASE)
        try:
            with self._mapped("opening the store"):
                last_notice = await self._catch_up(self._redis)
        except StoreError:
            await self.aclose()
            raise
        self._following = asyncio.create_task(self._follow_notices(last_notice), name=f"follow {self.keys.notices}")
        await self._warn_about_settings(self._redis)
        logger.info("Redis store %s open", self.url)

    async def _warn_about_settings(self, client: aioredis.Redis) -> None:
        """Say so when Redis is set up to lose what it acknowledged (a managed Redis may hide INFO: then nothing)."""
        try:
            info: dict[str, Any] = await client.info()
        except RedisError:
            return
        policy = _text(info.get("maxmemory_policy") or "noeviction")
        if policy != "noeviction":
            logger.warning(
                "Redis %s evicts keys when full (maxmemory-policy %s): stored events can be lost; use noeviction",
                self.url,
                policy,
            )
        if not info.get("aof_enabled"):
            logger.warning(
                "Redis %s keeps no append-only file (appendonly no): events stored since its last snapshot are "
                "lost if Redis stops; use appendonly yes",
                self.url,
            )

    async def aclose(self) -> None:
        self._closing = True
        appender = getattr(self, "_appender", None)
        if appender is not None:
            await appender.aclose()
        # A replica that stops gives its leases up: the others take over at once, not when they expire.
        for lease in list(self._leases):
            await lease.release()
        following, self._following = self._following, None
        if following is not None:
            # Cancelling alone is not enough: redis-py can swallow a cancellation that lands while it connects,
            # and then block in the read. Closing the listener's connection ends a read at once, and
            # _closing then stops _follow_notices; it is closed again until the reader has stopped.
            following.cancel()
            while not following.done():
                await self._close_client(self._listener)
                await asyncio.wait({following}, timeout=0.05)
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await self._close_client(self._listener)
        await self._close_client(self._redis)
        await self._close_client(self._quick)
        self._listener = self._redis = self._quick = None
        for sentinel in self._sentinels:
            for client in sentinel.sentinels:
                await self._close_client(client)
        self._sentinels = []

    @staticmethod
    async def _close_client(client: aioredis.Redis | None) -> None:
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def ping(self) -> None:
        with self._mapped("checking that it answers"):
            await self._client_or_raise(quick=True).ping()

    @contextlib.contextmanager
    def _mapped(self, action: str) -> Iterator[None]:
        """Redis's errors as the store's: StoreUnavailable when Redis cannot serve now, else StoreError."""
        try:
            yield
        except AuthenticationError as exc:  # a ConnectionError, but trying again will not help
            raise StoreError(f"Redis {self.url} refused the credentials ({action}): {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, OSError) as exc:
            raise StoreUnavailable(f"Redis {self.url} is unreachable ({action}): {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"Redis {self.url} failed ({action}): {exc}") from exc

    def _client_or_raise(self, quick: bool = False) -> aioredis.Redis:
        client = self._quick if quick else self._redis
        if client is None:
            raise StoreUnavailable(f"Redis store {self.url} is not open")
        return client

    # ---- wake-up across replicas -----------------------------------------------------------------

    async def _catch_up(self, client: aioredis.Redis) -> dict[str, bytes]:
        """Advance the notifier to every repository's counter; returns the notice streams to follow, from where.

        The notices' end is read first: whatever is appended after it is read from the notices, whatever
        before it is covered by the counters read next. (A lease released meanwhile is found when it expires.)
        """
        streams = {}
        for key in (self.keys.notices, self.keys.lease_released, self.keys.replays_requested):
            last = await client.xrevrange(key, count=1)
            streams[key] = last[0][0] if last and isinstance(last[0][0], bytes) else b"0-0"
        repository_ids = sorted(_text(r) for r in await client.smembers(self.keys.repositories))
        async with client.pipeline(transaction=False) as pipe:
            for repository_id in repository_ids:
                pipe.hget(self.keys.repository(repository_id), "last_sequence")
            counters = await pipe.execute()
        for repository_id, counter in zip(repository_ids, counters, strict=True):
            if counter is not None:
                self.notifier.advance(repository_id, int(counter))
        return streams

    async def _follow_notices(self, streams: dict[str, bytes] | None) -> None:
        """Wake this process's readers for appends made by any replica (this one included), and its lanes
        standing by for leases that any replica gave up."""
        assert self._listener is not None
        listener, delay_s, failing = self._listener, 0.01, False
        notices, released = self.keys.notices.encode(), self.keys.lease_released.encode()
        while not self._closing:
            try:
                if streams is None:
                    streams = await self._catch_up(listener)
                    if failing:
                        logger.info("Redis %s reachable again: following appends of every replica", self.url)
                    failing, delay_s = False, 0.01
                # RESP2: [[stream, [(entry id, {field: value}), …]]], or None when the block ran out.
                answer: Any = await listener.xread(
                    cast(Any, streams), count=1000, block=constants.REDIS_NOTICES_BLOCK_MS
                )
                for stream, entries in answer or []:
                    for entry_id, fields in entries:
                        streams[_text(stream)] = entry_id
                        if stream == notices:
                            self.notifier.advance(_text(fields[b"repository_id"]), int(fields[b"sequence"]))
                        elif stream == released:
                            self._lease_released(_text(fields[b"client_id"]), _text(fields[b"repository_id"]))
                        elif _text(fields[b"origin"]) != self.instance:  # this replica sent its own at once
                            for replays_requested in self._replay_listeners:
                                replays_requested(_text(fields[b"client_id"]), _text(fields[b"repository_id"]))
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                if not failing:
                    logger.warning("Redis %s: lost the notices of appends (%s); reconnecting", self.url, exc)
                failing, streams = True, None
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, constants.REDIS_RECONNECT_MAX_S)

    # ---- leases ----------------------------------------------------------------------------------

    def lease(self, client_id: str, repository_id: str, holder: str) -> Lease:
        return _RedisLease(self, client_id, repository_id, f"{self.instance} {holder}")

    def _lease_released(self, client_id: str, repository_id: str) -> None:
        waiters = self._lease_waiters.pop((client_id, repository_id), None)
        if waiters is not None:
            waiters.set()

    async def _lease_given_up(self, client_id: str, repository_id: str) -> None:
        """Wait until the lease of (client id, repository) is given up by its holder (or ``Lease.wait``'s
        caller times out, at its expiry)."""
        key = (client_id, repository_id)
        waiters = self._lease_waiters.get(key)
        if waiters is None:
            waiters = self._lease_waiters[key] = asyncio.Event()
        await waiters.wait()

    # ---- events ----------------------------------------------------------------------------------

    async def append(self, event: WebhookEvent) -> AppendResult:
        keys = self.keys
        rid = event.repository_id
        with self._mapped("storing an event"):
            created, sequence = await self._appender.append(
                [
                    keys.repository(rid),
                    keys.events(rid),
                    keys.deliveries(rid),
                    keys.received_at(rid),
                    keys.repositories,
                    keys.notices,
                ],
                [
                    rid,
                    event.delivery_id,
                    event.repository_name,
                    event.received_at_ns,
                    event.event_type,
                    json.dumps(event.headers),
                    event.body,
                    constants.REDIS_NOTICES_MAXLEN,
                ],
                len(event.body),
            )
        stored = event.with_sequence(int(sequence))
        if created:
            # This process's readers need not wait for the notice to come back.
            self.notifier.advance(rid, stored.sequence)
        return AppendResult(stored, created=bool(created))

    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        if limit <= 0:
            return []
        start = f"{after_sequence + 1}-0" if after_sequence >= 0 else "-"
        with self._mapped("reading events"):
            entries = await self._client_or_raise().xrange(self.keys.events(repository_id), start, "+", count=limit)
        return [self._event(repository_id, entry_id, fields) for entry_id, fields in entries or []]

    @staticmethod
    def _event(repository_id: str, entry_id: bytes | str | None, fields: Any) -> WebhookEvent:
        return WebhookEvent(
            repository_id=repository_id,
            delivery_id=_text(fields[b"delivery_id"]),
            event_type=_text(fields[b"event_type"]),
            body=bytes(fields[b"body"]),
            headers=tuple((name, value) for name, value in json.loads(fields[b"headers"])),
            received_at_ns=int(fields[b"received_at_ns"]),
            repository_name=_text(fields[b"repository_name"]),
            sequence=_sequence_of(entry_id),
        )

    # ---- cursors ---------------------------------------------------------------------------------

    async def get_cursor(self, client_id: str, repository_id: str) -> int | None:
        with self._mapped("reading a cursor"):
            value = await self._client_or_raise().hget(self.keys.cursors(repository_id), client_id)
        return None if value is None else int(value)

    async def set_cursor(self, client_id: str, repository_id: str, sequence: int) -> None:
        await self.set_cursors({(client_id, repository_id): sequence})

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        if not cursors:
            return
        with self._mapped("recording acknowledgements"):
            # One round trip for all of them; each stays atomic (a script), the batch need not be.
            async with self._client_or_raise().pipeline(transaction=False) as pipe:
                for (client_id, repository_id), sequence in cursors.items():
                    await self._set_cursor_script(
                        keys=[self.keys.cursors(repository_id), self.keys.repositories],
                        args=[client_id, sequence, repository_id],
                        client=pipe,
                    )
                await pipe.execute()

    async def start_cursor(self, client_id: str, repository_id: str) -> int:
        # From Redis, not from the notifier: another replica's append may not have been noticed here yet.
        cursor = await self.get_cursor(client_id, repository_id)
        if cursor is not None:
            return cursor
        state = await self.repository(repository_id)
        return 0 if state is None else state.first_sequence - 1

    # ---- dead letters and replays ----------------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        member = f"{letter.failed_at_ns:020d} " + json.dumps(astuple(letter))
        with self._mapped("recording a dead letter"):
            await self._add_dead_letter_script(
                keys=[self.keys.dead_letters, self.keys.dead_letters_by_time],
                args=[_dead_letter_field(letter.client_id, letter.repository_id, letter.sequence), member],
                client=self._client_or_raise(),
            )

    async def dead_letters(self, repository_id: str | None = None) -> list[DeadLetter]:
        with self._mapped("reading dead letters"):
            members = cast(list[bytes], await self._client_or_raise().zrange(self.keys.dead_letters_by_time, 0, -1))
        letters = [DeadLetter(*json.loads(_text(member).partition(" ")[2])) for member in members]
        return [letter for letter in letters if repository_id is None or letter.repository_id == repository_id]

    async def add_replays(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        if not sequences:
            return
        with self._mapped("recording replay requests"):
            async with self._client_or_raise().pipeline(transaction=True) as pipe:
                pipe.zadd(
                    self.keys.replays(repository_id, client_id), {str(sequence): sequence for sequence in sequences}
                )
                pipe.xadd(
                    self.keys.replays_requested,
                    {"client_id": client_id, "repository_id": repository_id, "origin": self.instance},
                    maxlen=constants.REDIS_LEASE_RELEASED_MAXLEN,
                    approximate=True,
                )
                await pipe.execute()

    def on_replays(self, listener: Callable[[str, str], None]) -> None:
        self._replay_listeners.append(listener)

    async def replays(self, client_id: str, repository_id: str) -> list[int]:
        with self._mapped("reading replay requests"):
            key = self.keys.replays(repository_id, client_id)
            members = cast(list[bytes], await self._client_or_raise().zrange(key, 0, -1))
        return [int(member) for member in members]

    async def settle_replay(self, client_id: str, repository_id: str, sequence: int, delivered: bool) -> None:
        with self._mapped("settling a replay"):
            await self._settle_replay_script(
                keys=[
                    self.keys.replays(repository_id, client_id),
                    self.keys.dead_letters,
                    self.keys.dead_letters_by_time,
                ],
                args=[sequence, _dead_letter_field(client_id, repository_id, sequence), "1" if delivered else "0"],
                client=self._client_or_raise(),
            )

    # ---- audit -----------------------------------------------------------------------------------

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        by_repository: dict[str, list[str | int]] = {}
        for r in records:
            by_repository.setdefault(r.repository_id, []).extend(
                [r.sequence, json.dumps([r.client_id, r.sequence, r.action, r.at_ns])]
            )
        with self._mapped("recording the audit trail"):
            for repository_id, args in by_repository.items():
                await self._add_audit_script(
                    keys=[self.keys.audit(repository_id), self.keys.repository(repository_id)],
                    args=args,
                    client=self._client_or_raise(),
                )

    async def audit(self, repository_id: str) -> list[AuditRecord]:
        client = self._client_or_raise()
        with self._mapped("reading the audit trail"):
            first = await self._first_retained(client, repository_id)
            members = cast(list[bytes], await client.zrangebyscore(self.keys.audit(repository_id), first, "+inf"))
        records = []
        for member in members:
            client_id, sequence, action, at_ns = json.loads(_text(member)[20:])
            records.append(AuditRecord(client_id, repository_id, sequence, action, at_ns))
        return records

    async def _first_retained(self, client: aioredis.Redis, repository_id: str) -> int:
        """The sequence of the oldest retained event, or the next one when none is retained."""
        first = await client.zrange(self.keys.received_at(repository_id), 0, 0, withscores=True)
        if first:
            return int(cast(Any, first)[0][1])
        last = await client.hget(self.keys.repository(repository_id), "last_sequence")
        return 0 if last is None else int(last) + 1

    # ---- repositories and pruning ----------------------------------------------------------------

    async def repositories(self) -> list[RepositoryState]:
        client = self._client_or_raise()
        with self._mapped("listing repositories"):
            repository_ids = sorted(_text(r) for r in await client.smembers(self.keys.repositories))
            return await self._states(client, repository_ids)

    async def repository(self, repository_id: str) -> RepositoryState | None:
        client = self._client_or_raise()
        with self._mapped("reading a repository"):
            if not await client.sismember(self.keys.repositories, repository_id):
                return None
            [state] = await self._states(client, [repository_id])
        return state

    async def _states(self, client: aioredis.Redis, repository_ids: list[str]) -> list[RepositoryState]:
        # One MULTI: counts, bounds and cursors of one moment.
        async with client.pipeline(transaction=True) as pipe:
            for repository_id in repository_ids:
                pipe.hmget(self.keys.repository(repository_id), ["last_sequence", "name"])
                pipe.xlen(self.keys.events(repository_id))
                pipe.zrange(self.keys.received_at(repository_id), 0, 0, withscores=True)
                pipe.hgetall(self.keys.cursors(repository_id))
            answers: list[Any] = await pipe.execute()
        states = []
        for i, repository_id in enumerate(repository_ids):
            (last, name), count, first, cursors = answers[4 * i : 4 * i + 4]
            last_sequence = int(last or 0)
            states.append(
                RepositoryState(
                    repository_id=repository_id,
                    repository_name=_text(name),
                    event_count=int(count),
                    first_sequence=int(first[0][1]) if first else last_sequence + 1,
                    last_sequence=last_sequence,
                    cursors={_text(c): int(s) for c, s in cursors.items()},
                )
            )
        return states

    async def prune(self, now_ns: int, retention_s: float, max_age_s: float) -> int:
        """As the interface says; safe to run on every replica at once (each trim is one script)."""
        client = self._client_or_raise()
        args: list[str | int] = [
            _cutoff_ns(now_ns, max_age_s),
            _cutoff_ns(now_ns, retention_s),
            constants.REDIS_PRUNE_BATCH,
        ]
        pruned = 0
        with self._mapped("pruning"):
            for repository_id in sorted(_text(r) for r in await client.smembers(self.keys.repositories)):
                keys = [
                    self.keys.events(repository_id),
                    self.keys.received_at(repository_id),
                    self.keys.deliveries(repository_id),
                    self.keys.cursors(repository_id),
                    self.keys.audit(repository_id),
                ]
                while True:
                    count = int(await self._prune_script(keys=keys, args=args, client=client))
                    pruned += count
                    if count < constants.REDIS_PRUNE_BATCH:
                        break
        return pruned


#: A holder counts its lease as its own for this much of the time to live after sending a renewal; the
#: rest is the margin for clocks and latency, so it stops serving before Redis can give the lease away.
_LEASE_VALID_FRACTION = 0.9


class _RedisLease(Lease):
    """A lease in Redis (see the module's docstring): taken with a fencing token, renewed by a task of its own
    while held, lost (``lost`` set) when it cannot be renewed before it would expire."""

    def __init__(self, store: RedisStore, client_id: str, repository_id: str, holder: str) -> None:
        super().__init__(client_id, repository_id, holder)
        self._store = store
        self._key = store.keys.lease(repository_id, client_id)
        self._ttl_ms = store.settings.lease_ttl_ms
        #: "<token> <holder>" while held
        self._value: bytes | None = None
        #: the fencing token this holder last held
        self._token: int | None = None
        #: True from asking until told no: a cancelled ask may have been granted
        self._maybe_held = False
        self._renewing: asyncio.Task[None] | None = None
        #: how long wait() waits at most: until the lease expires, or a backoff while Redis is away
        self._wait_s = 0.0
        self._failing = False

    async def acquire(self) -> bool:
        store = self._store
        started = asyncio.get_running_loop().time()
        self._maybe_held = True
        store._leases.add(self)
        try:
            with store._mapped("taking a lease"):
                granted, detail, value = await store._acquire_lease_script(
                    keys=[self._key, store.keys.lease_tokens(self.repository_id)],
                    args=[self.client_id, self.holder, self._ttl_ms],
                    client=store._client_or_raise(quick=True),
                )
        except StoreError as exc:
            if not self._failing:
                logger.warning(
                    "client %s: cannot take the lease of repository %s (%s); retrying",
                    self.client_id,
                    self.repository_id,
                    exc,
                )
            self._failing = True
            self._wait_s = min(max(self._wait_s * 2, 0.1), constants.REDIS_RECONNECT_MAX_S)
            return False
        self._failing = False
        if not granted:
            self._maybe_held = False
            store._leases.discard(self)
            expires_ms = int(detail)
            self._wait_s = (expires_ms if expires_ms >= 0 else self._ttl_ms) / 1000 + 0.005
            logger.debug("lease %s is held by %s for %d ms more", self._key, _text(value), expires_ms)
            return False
        token = int(detail)
        if self._value is None:
            logger.info(
                "client %s: repository %s served by %s (lease fencing token %d)",
                self.client_id,
                self.repository_id,
                self.holder,
                token,
            )
        # Tokens rise by one per new holder: this holder's own last one, or the next, means nobody else held it.
        self.held_elsewhere = self._token is not None and token > self._token + 1
        self._token = token
        self._value = value
        self.lost.clear()
        if self._renewing is None or self._renewing.done():
            valid_until = started + self._ttl_ms / 1000 * _LEASE_VALID_FRACTION
            self._renewing = asyncio.create_task(self._renew(valid_until), name=f"renew {self._key}")
        return True

    async def wait(self) -> None:
        if self._failing:
            await asyncio.sleep(self._wait_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._store._lease_given_up(self.client_id, self.repository_id), self._wait_s)

    async def _renew(self, valid_until: float) -> None:
        """Keep the lease; when that fails until it may have expired (or another holder has it), it is lost.

        ``valid_until`` is on the loop's clock, and counted from before the last renewal was sent, with a
        margin: past it, Redis may have let the lease expire and another replica may serve the repository.
        """
        store, loop, value = self._store, asyncio.get_running_loop(), self._value
        assert value is not None
        ttl_s = self._ttl_ms / 1000
        every_s = ttl_s * constants.REDIS_LEASE_RENEW_FRACTION
        delay_s, failing = every_s, False
        while True:
            await asyncio.sleep(max(0.0, min(delay_s, valid_until - loop.time())))
            sent = loop.time()
            try:
                renewed = await asyncio.wait_for(
                    store._renew_lease_script(
                        keys=[self._key],
                        args=[value, self._ttl_ms],
                        client=store._client_or_raise(quick=True),
                    ),
                    max(0.0, valid_until - sent),
                )
            except (RedisError, OSError, TimeoutError, StoreUnavailable) as exc:
                if loop.time() >= valid_until:
                    logger.error(
                        "client %s: lease of repository %s not renewed in time (%s): stop serving it here",
                        self.client_id,
                        self.repository_id,
                        exc or "timed out",
                    )
                    break
                if not failing:
                    logger.warning(
                        "client %s: cannot renew the lease of repository %s (%s); retrying",
                        self.client_id,
                        self.repository_id,
                        exc,
                    )
                delay_s, failing = every_s / 4, True
                continue
            if not renewed:
                logger.error(
                    "client %s: the lease of repository %s expired and was taken by another holder: stop serving "
                    "it here",
                    self.client_id,
                    self.repository_id,
                )
                break
            valid_until = sent + ttl_s * _LEASE_VALID_FRACTION
            delay_s, failing = every_s, False
        self._value = None
        self.lost.set()

    async def release(self) -> None:
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        held, self._value = self._value is not None, None
        if not self._maybe_held:
            return
        self._maybe_held = False
        store = self._store
        store._leases.discard(self)
        try:
            with store._mapped("giving a lease up"):
                released = await store._release_lease_script(
                    keys=[self._key, store.keys.lease_released],
                    args=[self.holder, self.client_id, self.repository_id, constants.REDIS_LEASE_RELEASED_MAXLEN],
                    client=store._client_or_raise(quick=True),
                )
        except StoreError as exc:
            if held:
                logger.warning(
                    "client %s: cannot give the lease of repository %s up (%s); it expires within %d ms",
                    self.client_id,
                    self.repository_id,
                    exc,
                    self._ttl_ms,
                )
            return
        if released:
            store._lease_released(self.client_id, self.repository_id)
            logger.info(
                "client %s: repository %s no longer served by %s", self.client_id, self.repository_id, self.holder
            )


class _AppendBatcher:
    """Appends that arrive while a batch is on its way to Redis go out together, as one pipeline of EVALSHAs:
    one write and one read for many webhooks (and, with ``appendfsync always``, one fsync in Redis) instead of
    a pooled connection and a round trip each. Every caller still waits for its own script's answer, so a 201
    is never sent before Redis stored that event; one webhook alone goes out at once, as before."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        #: (keys, args, body bytes, the caller's future)
        self._queue: deque[tuple[list[str], list[Any], int, asyncio.Future[Any]]] = deque()
        self._sending: asyncio.Task[None] | None = None

    async def append(self, keys: list[str], args: list[Any], size: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, size, future))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="redis appends")
        return await future

    async def aclose(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None and not sending.done():
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending

    async def _send(self) -> None:
        while self._queue:
            batch = [self._queue.popleft()]
            size = batch[0][2]
            while (
                self._queue and len(batch) < constants.REDIS_APPEND_BATCH and size < constants.REDIS_APPEND_BATCH_BYTES
            ):
                batch.append(self._queue.popleft())
                size += batch[-1][2]
            try:
                answers = await self._execute([(keys, args) for keys, args, _, _ in batch])
            except Exception as exc:
                answers = [exc] * len(batch)
            except asyncio.CancelledError as exc:  # the store closes: nobody is left waiting
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable(f"Redis store {self._store.url} closed"))
                raise exc
            for (*_, future), answer in zip(batch, answers, strict=True):
                if future.done():  # the caller went away (its client disconnected)
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _execute(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        store = self._store
        client = store._client_or_raise(quick=True)
        answers: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            async with client.pipeline(transaction=False) as pipe:
                for i in pending:
                    keys, args = calls[i]
                    pipe.evalsha(store._append_script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            for i, result in zip(pending, results, strict=True):
                answers[i] = result
            # Redis restarted without its scripts: load it once, and run again only what did not run.
            pending = [i for i in pending if isinstance(answers[i], NoScriptError)]
            if not pending or attempt:
                return answers
            await client.script_load(_APPEND)
        return answers
