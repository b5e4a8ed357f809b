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
re-reads the counters and goes on from the notices stream's end (``notices.py``).

Serving across replicas: while a connection serves a repository to a client id, its replica holds a lease
in Redis (``SET NX PX`` in a script, renewed every third of its ``?lease_ttl=``, given up when the
connection stops serving it); another replica's connection of that client id stands by, and takes over from
the last acknowledged event when the lease is given up (at once: a notice on the ``lease_released`` stream,
read with the append notices) or has expired (the holder died). Each new holder gets a higher fencing token.
A holder that cannot renew its lease stops sending before the lease can have expired in Redis.

Durability is Redis's own: with ``appendonly yes`` and ``appendfsync always`` an acknowledged append
survives a crash of Redis; with ``everysec`` up to a second may be lost. Redis errors are raised as
``StoreUnavailable`` (cannot reach it; try again) or ``StoreError``.

Modules: ``store`` (the operations, :class:`RedisStore`), ``scripts`` (the Lua scripts), ``keys`` (key
names), ``connection`` (the clients and the mapping of Redis's errors), ``notices`` (the follower of the
notices streams), ``lease`` (the leases) and ``batcher`` (appends sent in batches).
"""

from __future__ import annotations

from gitstafette.store.redis.store import RedisStore

__all__ = ["RedisStore"]
