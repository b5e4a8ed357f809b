"""The SQLite store's filter of the deliveries it holds: a repeat is found without a lookup in the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from rbloom import Bloom

__all__ = ["DELIVERIES_FALSE_POSITIVES", "DELIVERIES_MIN_CAPACITY", "StoredDeliveries"]

#: The filter of stored deliveries: rebuilt from the file once it took more than its capacity
DELIVERIES_MIN_CAPACITY = 1_000_000
DELIVERIES_FALSE_POSITIVES = 0.01


class StoredDeliveries:
    """The (repository, delivery id) pairs that may be stored: a Bloom filter, which never misses one that is.

    A pruned event stays in it (a false positive costs one lookup) until it is rebuilt from the file, which
    ``SQLiteStore`` does once it took more than its capacity.

    :param min_capacity: the least it holds before it is full (twice ``count`` when that is more).
    """

    def __init__(
        self, keys: Iterable[tuple[str, str]], count: int, min_capacity: int = DELIVERIES_MIN_CAPACITY
    ) -> None:
        self.capacity = max(min_capacity, 2 * count)
        self._bloom = Bloom(self.capacity, DELIVERIES_FALSE_POSITIVES)
        self._bloom.update(keys)
        self.count = count
        #: while a rebuild reads the file: what was added since it began
        self.recorded: list[tuple[str, str]] | None = None

    @classmethod
    def read(cls, connection: sqlite3.Connection, min_capacity: int = DELIVERIES_MIN_CAPACITY) -> StoredDeliveries:
        (count,) = connection.execute("SELECT COUNT(*) FROM events").fetchone()
        return cls(connection.execute("SELECT repository_id, delivery_id FROM events"), count, min_capacity)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._bloom

    def add(self, key: tuple[str, str]) -> None:
        self._bloom.add(key)
        self.count += 1
        if self.recorded is not None:
            self.recorded.append(key)

    def update(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            self.add(key)

    @property
    def full(self) -> bool:
        return self.count > self.capacity
