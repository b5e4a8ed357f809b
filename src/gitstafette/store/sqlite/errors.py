"""SQLite's errors as the store's: :class:`StoreUnavailable` for what may pass (the file locked or busy, an I/O
error, the disk full), :class:`StoreError` for what will not (a corrupt file, the schema, a constraint, a bug)."""

from __future__ import annotations

import sqlite3

from gitstafette.exceptions import StoreError, StoreUnavailable

__all__ = ["TRANSIENT_CODES", "as_store_error"]

#: primary result codes (https://sqlite.org/rescode.html) of failures that may pass: trying again may succeed
TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,  # another connection holds the lock (past the busy timeout)
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_IOERR,  # a disk or network file system failed to read or write
        sqlite3.SQLITE_FULL,  # the disk is full: pruning, or an operator, makes room
        sqlite3.SQLITE_CANTOPEN,  # the file or its folder is away for now (a volume not mounted yet)
        sqlite3.SQLITE_PROTOCOL,  # a locking race of the WAL
    }
)


def as_store_error(exc: Exception, action: str) -> StoreError:
    """The store's error for ``exc``, raised while doing ``action`` (for the message).

    By the primary result code where SQLite gave one; an ``OperationalError`` without one (SQLite's word for
    "not the program's fault") counts as transient, anything else (a closed connection, a bug) as a fault.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        transient = code & 0xFF in TRANSIENT_CODES
    else:
        transient = isinstance(exc, sqlite3.OperationalError)
    name = getattr(exc, "sqlite_errorname", None)
    detail = f"{exc} ({name})" if name else str(exc)
    kind = StoreUnavailable if transient else StoreError
    return kind(f"SQLite {action} failed: {detail}")
