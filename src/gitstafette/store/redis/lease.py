"""Serving across replicas: the leases in Redis that let one connection at a time serve a (client id,
repository), with fencing tokens (the design is in the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from gitstafette import constants
from gitstafette.exceptions import StoreError, StoreUnavailable
from gitstafette.store.base import Lease
from gitstafette.store.redis.connection import RedisConnections
from gitstafette.store.redis.keys import Keys, text
from gitstafette.store.redis.scripts import Scripts

__all__ = ["Leases", "RedisLease"]

logger = logging.getLogger(__name__)


class Leases:
    """The leases of one store instance: those it holds (or may: asked, no answer yet), given up when it
    closes, and the lanes standing by until another holder gives a lease up.

    :param connections: the store's clients (leases use the quick one) and its error mapping.
    :param keys: the installation's key names.
    :param scripts: the store's scripts (registered when it opens, before any lease is taken).
    :param ttl_ms: a lease's time to live (``?lease_ttl=``).
    """

    def __init__(self, connections: RedisConnections, keys: Keys, scripts: Scripts, ttl_ms: int) -> None:
        self.connections = connections
        self.keys = keys
        self.scripts = scripts
        self.ttl_ms = ttl_ms
        #: leases this replica holds (or may: asked, no answer yet), given up when the store closes
        self._held: set[RedisLease] = set()
        #: (client id, repository id) → woken when another holder gives that lease up
        self._waiters: dict[tuple[str, str], asyncio.Event] = {}

    def lease(self, client_id: str, repository_id: str, holder: str) -> RedisLease:
        return RedisLease(self, client_id, repository_id, holder)

    async def release_all(self) -> None:
        """Give every lease held up (the store closes: the other replicas take over at once)."""
        for lease in list(self._held):
            await lease.release()

    def released(self, client_id: str, repository_id: str) -> None:
        """The lease of (client id, repository) was given up, here or by another replica: wake who waits."""
        waiters = self._waiters.pop((client_id, repository_id), None)
        if waiters is not None:
            waiters.set()

    async def given_up(self, client_id: str, repository_id: str) -> None:
        """Wait until the lease of (client id, repository) is given up by its holder (or ``Lease.wait``'s
        caller times out, at its expiry)."""
        key = (client_id, repository_id)
        waiters = self._waiters.get(key)
        if waiters is None:
            waiters = self._waiters[key] = asyncio.Event()
        await waiters.wait()


#: A holder counts its lease as its own for this much of the time to live after sending a renewal; the
#: rest is the margin for clocks and latency, so it stops serving before Redis can give the lease away.
_LEASE_VALID_FRACTION = 0.9


class RedisLease(Lease):
    """A lease in Redis (see the package's docstring): taken with a fencing token, renewed by a task of its own
    while held, lost (``lost`` set) when it cannot be renewed before it would expire."""

    def __init__(self, leases: Leases, client_id: str, repository_id: str, holder: str) -> None:
        super().__init__(client_id, repository_id, holder)
        self._leases = leases
        self._key = leases.keys.lease(repository_id, client_id)
        self._ttl_ms = leases.ttl_ms
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
        leases, connections = self._leases, self._leases.connections
        started = asyncio.get_running_loop().time()
        self._maybe_held = True
        leases._held.add(self)
        try:
            with connections.mapped("taking a lease"):
                granted, detail, value = await leases.scripts.acquire_lease(
                    keys=[self._key, leases.keys.lease_tokens(self.repository_id)],
                    args=[self.client_id, self.holder, self._ttl_ms],
                    client=connections.client_or_raise(quick=True),
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
            leases._held.discard(self)
            expires_ms = int(detail)
            self._wait_s = (expires_ms if expires_ms >= 0 else self._ttl_ms) / 1000 + 0.005
            logger.debug("lease %s is held by %s for %d ms more", self._key, text(value), expires_ms)
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
            await asyncio.wait_for(self._leases.given_up(self.client_id, self.repository_id), self._wait_s)

    async def _renew(self, valid_until: float) -> None:
        """Keep the lease; when that fails until it may have expired (or another holder has it), it is lost.

        ``valid_until`` is on the loop's clock, and counted from before the last renewal was sent, with a
        margin: past it, Redis may have let the lease expire and another replica may serve the repository.
        """
        leases, loop, value = self._leases, asyncio.get_running_loop(), self._value
        assert value is not None
        ttl_s = self._ttl_ms / 1000
        every_s = ttl_s * constants.REDIS_LEASE_RENEW_FRACTION
        delay_s, failing = every_s, False
        while True:
            await asyncio.sleep(max(0.0, min(delay_s, valid_until - loop.time())))
            sent = loop.time()
            try:
                renewed = await asyncio.wait_for(
                    leases.scripts.renew_lease(
                        keys=[self._key],
                        args=[value, self._ttl_ms],
                        client=leases.connections.client_or_raise(quick=True),
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
        leases, connections = self._leases, self._leases.connections
        leases._held.discard(self)
        try:
            with connections.mapped("giving a lease up"):
                released = await leases.scripts.release_lease(
                    keys=[self._key, leases.keys.lease_released],
                    args=[self.holder, self.client_id, self.repository_id, constants.REDIS_LEASE_RELEASED_MAXLEN],
                    client=connections.client_or_raise(quick=True),
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
            leases.released(self.client_id, self.repository_id)
            logger.info(
                "client %s: repository %s no longer served by %s", self.client_id, self.repository_id, self.holder
            )
