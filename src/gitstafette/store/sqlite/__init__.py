"""The embedded default store: one SQLite file in WAL mode.

``store`` holds the operations (:class:`SQLiteStore`), ``writer`` the group-commit writer thread and the
checkpointer beside it, ``deliveries`` the Bloom filter of stored deliveries, ``schema`` the tables and
the connection settings.
"""

from __future__ import annotations

from gitstafette.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
