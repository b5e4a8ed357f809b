"""Event stores. ``create_store`` picks the backend from the configured URL's scheme."""

from __future__ import annotations

from gitstafette.config import StoreConfig
from gitstafette.store.base import AppendResult, EventStore, Lease
from gitstafette.store.memory import MemoryStore
from gitstafette.store.sqlite import SQLiteStore

__all__ = ["AppendResult", "EventStore", "Lease", "MemoryStore", "SQLiteStore", "create_store"]


def create_store(config: StoreConfig) -> EventStore:
    if config.scheme == "memory":
        return MemoryStore()
    if config.scheme == "redis":
        assert config.redis is not None
        # Imported here: redis-py is only loaded by the installations that use it.
        from gitstafette.store.redis import RedisStore

        return RedisStore(config.redis)
    return SQLiteStore(config.path, synchronous=config.synchronous)
