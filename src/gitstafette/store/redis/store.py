"""The Redis store's operations: :class:`RedisStore` (the design is in the package's docstring)."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gitstafette import constants
from gitstafette.config import RedisSettings
from gitstafette.exceptions import StoreError
from gitstafette.model import AuditRecord, DeadLetter, RepositoryState, WebhookEvent
from gitstafette.store.base import AppendResult, EventStore, Lease
from gitstafette.store.redis.batcher import AppendBatcher
from gitstafette.store.redis.connection import RedisConnections
from gitstafette.store.redis.keys import Keys, sequence_of, text
from gitstafette.store.redis.lease import Leases
from gitstafette.store.redis.notices import NoticesFollower
from gitstafette.store.redis.scripts import Scripts

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)


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

    kind = "redis"

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__()
        self.settings = settings
        self.url = str(settings)  # the password masked
        self.keys = Keys(settings.prefix)
        #: names this store instance (this replica) as a lease holder, also for whoever reads the lease in Redis
        self.instance = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._connections = RedisConnections(settings)
        self._scripts = Scripts()
        self._leases = Leases(self._connections, self.keys, self._scripts, settings.lease_ttl_ms)
        self._notices = NoticesFollower(self.keys, self.committed, self.instance, self.url, self._leases.released)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self._notices.opening()
        self._connections.open()
        client = self._connections.client_or_raise()
        self._scripts.register(client)
        self._appender = AppendBatcher(self._connections, self._scripts.append)
        try:
            with self._connections.mapped("opening the store"):
                last_notice = await self._notices.catch_up(client)
        except StoreError:
            await self.aclose()
            raise
        self._notices.follow(self._connections.listener, last_notice)
        await self._warn_about_settings(client)
        logger.info("Redis store %s open", self.url)

    async def _warn_about_settings(self, client: aioredis.Redis) -> None:
        """Say so when Redis is set up to lose what it acknowledged (a managed Redis may hide INFO: then nothing)."""
        try:
            info: dict[str, Any] = await client.info()
        except RedisError:
            return
        policy = text(info.get("maxmemory_policy") or "noeviction")
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
        self._notices.closing()
        appender = getattr(self, "_appender", None)
        if appender is not None:
            await appender.aclose()
        # A replica that stops gives its leases up: the others take over at once, not when they expire.
        await self._leases.release_all()
        await self._notices.stop(self._connections.close_listener)
        await self._connections.aclose()

    async def ping(self) -> None:
        with self._connections.mapped("checking that it answers"):
            await self._connections.client_or_raise(quick=True).ping()

    # ---- leases ----------------------------------------------------------------------------------

    def lease(self, client_id: str, repository_id: str, holder: str) -> Lease:
        return self._leases.lease(client_id, repository_id, f"{self.instance} {holder}")

    # ---- events ----------------------------------------------------------------------------------

    async def append(self, event: WebhookEvent) -> AppendResult:
        keys = self.keys
        rid = event.repository_id
        with self._connections.mapped("storing an event"):
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
            self.committed.advance(rid, stored.sequence)
        return AppendResult(stored, created=bool(created))

    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        if limit <= 0:
            return []
        start = f"{after_sequence + 1}-0" if after_sequence >= 0 else "-"
        with self._connections.mapped("reading events"):
            entries = await self._connections.client_or_raise().xrange(
                self.keys.events(repository_id), start, "+", count=limit
            )
        return [self._event(repository_id, entry_id, fields) for entry_id, fields in entries or []]

    @staticmethod
    def _event(repository_id: str, entry_id: bytes | str | None, fields: Any) -> WebhookEvent:
        return WebhookEvent(
            repository_id=repository_id,
            delivery_id=text(fields[b"delivery_id"]),
            event_type=text(fields[b"event_type"]),
            body=bytes(fields[b"body"]),
            headers=tuple((name, value) for name, value in json.loads(fields[b"headers"])),
            received_at_ns=int(fields[b"received_at_ns"]),
            repository_name=text(fields[b"repository_name"]),
            sequence=sequence_of(entry_id),
        )

    # ---- cursors ---------------------------------------------------------------------------------

    async def get_cursor(self, client_id: str, repository_id: str) -> int | None:
        with self._connections.mapped("reading a cursor"):
            value = await self._connections.client_or_raise().hget(self.keys.cursors(repository_id), client_id)
        return None if value is None else int(value)

    async def set_cursor(self, client_id: str, repository_id: str, sequence: int) -> None:
        await self.set_cursors({(client_id, repository_id): sequence})

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        if not cursors:
            return
        with self._connections.mapped("recording acknowledgements"):
            # One round trip for all of them; each stays atomic (a script), the batch need not be.
            async with self._connections.client_or_raise().pipeline(transaction=False) as pipe:
                for (client_id, repository_id), sequence in cursors.items():
                    await self._scripts.set_cursor(
                        keys=[self.keys.cursors(repository_id), self.keys.repositories],
                        args=[client_id, sequence, repository_id],
                        client=pipe,
                    )
                await pipe.execute()

    async def start_cursor(self, client_id: str, repository_id: str) -> int:
        # From Redis, not from ``committed``: another replica's append may not have been noticed here yet.
        cursor = await self.get_cursor(client_id, repository_id)
        if cursor is not None:
            return cursor
        state = await self.repository(repository_id)
        return 0 if state is None else state.first_sequence - 1

    # ---- dead letters and replays ----------------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        member = f"{letter.failed_at_ns:020d} " + json.dumps(astuple(letter))
        with self._connections.mapped("recording a dead letter"):
            await self._scripts.add_dead_letter(
                keys=[self.keys.dead_letters, self.keys.dead_letters_by_time],
                args=[_dead_letter_field(letter.client_id, letter.repository_id, letter.sequence), member],
                client=self._connections.client_or_raise(),
            )

    async def dead_letters(self, repository_id: str | None = None) -> list[DeadLetter]:
        with self._connections.mapped("reading dead letters"):
            members = cast(
                list[bytes], await self._connections.client_or_raise().zrange(self.keys.dead_letters_by_time, 0, -1)
            )
        letters = [DeadLetter(*json.loads(text(member).partition(" ")[2])) for member in members]
        return [letter for letter in letters if repository_id is None or letter.repository_id == repository_id]

    async def add_replays(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        if not sequences:
            return
        with self._connections.mapped("recording replay requests"):
            async with self._connections.client_or_raise().pipeline(transaction=True) as pipe:
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
        self._notices.on_replays(listener)

    async def replays(self, client_id: str, repository_id: str) -> list[int]:
        with self._connections.mapped("reading replay requests"):
            key = self.keys.replays(repository_id, client_id)
            members = cast(list[bytes], await self._connections.client_or_raise().zrange(key, 0, -1))
        return [int(member) for member in members]

    async def settle_replay(self, client_id: str, repository_id: str, sequence: int, delivered: bool) -> None:
        with self._connections.mapped("settling a replay"):
            await self._scripts.settle_replay(
                keys=[
                    self.keys.replays(repository_id, client_id),
                    self.keys.dead_letters,
                    self.keys.dead_letters_by_time,
                ],
                args=[sequence, _dead_letter_field(client_id, repository_id, sequence), "1" if delivered else "0"],
                client=self._connections.client_or_raise(),
            )

    # ---- audit -----------------------------------------------------------------------------------

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        by_repository: dict[str, list[str | int]] = {}
        for r in records:
            by_repository.setdefault(r.repository_id, []).extend(
                [r.sequence, json.dumps([r.client_id, r.sequence, r.action, r.at_ns])]
            )
        with self._connections.mapped("recording the audit trail"):
            for repository_id, args in by_repository.items():
                await self._scripts.add_audit(
                    keys=[self.keys.audit(repository_id), self.keys.repository(repository_id)],
                    args=args,
                    client=self._connections.client_or_raise(),
                )

    async def audit(self, repository_id: str, sequence: int | None = None) -> list[AuditRecord]:
        client = self._connections.client_or_raise()
        with self._connections.mapped("reading the audit trail"):
            first = await self._first_retained(client, repository_id)
            low, high = (first, "+inf") if sequence is None else (max(first, sequence), sequence)
            members = cast(list[bytes], await client.zrangebyscore(self.keys.audit(repository_id), low, high))
        records = []
        for member in members:
            client_id, sequence, action, at_ns = json.loads(text(member)[20:])
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
        client = self._connections.client_or_raise()
        with self._connections.mapped("listing repositories"):
            repository_ids = sorted(text(r) for r in await client.smembers(self.keys.repositories))
            return await self._states(client, repository_ids)

    async def repository(self, repository_id: str) -> RepositoryState | None:
        client = self._connections.client_or_raise()
        with self._connections.mapped("reading a repository"):
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
                    repository_name=text(name),
                    event_count=int(count),
                    first_sequence=int(first[0][1]) if first else last_sequence + 1,
                    last_sequence=last_sequence,
                    cursors={text(c): int(s) for c, s in cursors.items()},
                )
            )
        return states

    async def prune(self, now_ns: int, retention_s: float, max_age_s: float) -> int:
        """As the interface says; safe to run on every replica at once (each trim is one script)."""
        client = self._connections.client_or_raise()
        args: list[str | int] = [
            _cutoff_ns(now_ns, max_age_s),
            _cutoff_ns(now_ns, retention_s),
            constants.REDIS_PRUNE_BATCH,
        ]
        pruned = 0
        with self._connections.mapped("pruning"):
            for repository_id in sorted(text(r) for r in await client.smembers(self.keys.repositories)):
                keys = [
                    self.keys.events(repository_id),
                    self.keys.received_at(repository_id),
                    self.keys.deliveries(repository_id),
                    self.keys.cursors(repository_id),
                    self.keys.audit(repository_id),
                ]
                while True:
                    count = int(await self._scripts.prune(keys=keys, args=args, client=client))
                    pruned += count
                    if count < constants.REDIS_PRUNE_BATCH:
                        break
        return pruned
