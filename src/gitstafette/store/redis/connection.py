"""The Redis store's connections to Redis (or to the master its sentinels name), and the mapping of Redis's
errors to the store's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gitstafette import constants
from gitstafette.config import RedisSettings
from gitstafette.exceptions import StoreError, StoreUnavailable

__all__ = ["RedisConnections"]


class RedisConnections:
    """The clients of one store instance, made by :meth:`open` and closed by :meth:`aclose`: one for most
    commands, a quick one for what must fail fast when Redis hangs, and the notices follower's own.

    :param settings: the Redis server (``RedisSettings.from_url``).
    """

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.url = str(settings)  # the password masked
        self._redis: aioredis.Redis | None = None
        #: for what must fail fast when Redis hangs: appends (a POST waits for them), pings, leases
        self._quick: aioredis.Redis | None = None
        self._listener: aioredis.Redis | None = None
        #: the sentinels asked for the master, with a connection of their own to each (Sentinel only)
        self._sentinels: list[Sentinel] = []

    def open(self) -> None:
        """Make the clients (they connect when first used)."""
        self._redis = self._client(constants.REDIS_SOCKET_TIMEOUT_S, retries=1)
        self._quick = self._client(constants.REDIS_INGEST_TIMEOUT_S, retries=1, retry_timeouts=False)
        # The blocking read of the notices needs a connection of its own, and a socket timeout beyond the block.
        # No retries: its errors must reach the notices follower, which then re-reads what it may have missed.
        self._listener = self._client(
            constants.REDIS_NOTICES_BLOCK_MS / 1000 + constants.REDIS_SOCKET_TIMEOUT_S, retries=0
        )

    @property
    def listener(self) -> aioredis.Redis:
        """The client of the notices' blocking read (open only)."""
        assert self._listener is not None
        return self._listener

    async def close_listener(self) -> None:
        """Close the listener's connection, which ends a blocking read at once; it reconnects when used again."""
        await self._close_client(self._listener)

    async def aclose(self) -> None:
        await self._close_client(self._listener)
        await self._close_client(self._redis)
        await self._close_client(self._quick)
        self._listener = self._redis = self._quick = None
        for sentinel in self._sentinels:
            for client in sentinel.sentinels:
                await self._close_client(client)
        self._sentinels = []

    def _client(self, socket_timeout_s: float, retries: int, retry_timeouts: bool = True) -> aioredis.Redis:
        settings = self.settings
        if settings.sentinels:
            # The master of the moment: asked of the sentinels on each new connection, so after a failover
            # the connections that fail (the old master is gone, or now read-only) are made again to the new one.
            sentinel = Sentinel(
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

    @staticmethod
    async def _close_client(client: aioredis.Redis | None) -> None:
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    @contextlib.contextmanager
    def mapped(self, action: str) -> Iterator[None]:
        """Redis's errors as the store's: StoreUnavailable when Redis cannot serve now (unreachable, timed out,
        loading, read-only or without a master during a failover, out of memory until pruning or an operator
        makes room), else StoreError (credentials or ACL refused, a key of the wrong type, a script's error)."""
        try:
            yield
        except (AuthenticationError, AuthorizationError) as exc:  # ConnectionErrors, but trying again will not help
            raise StoreError(f"Redis {self.url} refused the credentials ({action}): {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, OSError) as exc:
            raise StoreUnavailable(f"Redis {self.url} is unreachable ({action}): {exc}") from exc
        except (OutOfMemoryError, TryAgainError, MasterDownError) as exc:
            raise StoreUnavailable(f"Redis {self.url} cannot serve now ({action}): {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"Redis {self.url} failed ({action}): {exc}") from exc

    def client_or_raise(self, quick: bool = False) -> aioredis.Redis:
        """The client for most commands, or the quick one; ``StoreUnavailable`` while the store is not open."""
        client = self._quick if quick else self._redis
        if client is None:
            raise StoreUnavailable(f"Redis store {self.url} is not open")
        return client
