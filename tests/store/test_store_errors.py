"""Each backend raises the store's two errors only, and the same way: ``StoreUnavailable`` for what may pass
(unreachable, timed out, locked, busy, an I/O error, full), ``StoreError`` for what will not (credentials or
permissions refused, data of the wrong type, a script's error, a corrupt file, the schema, a constraint)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis.exceptions as redis_errors

from gitstafette.config import RedisSettings
from gitstafette.exceptions import GitstafetteError, StoreError, StoreUnavailable
from gitstafette.store.redis.connection import RedisConnections
from gitstafette.store.sqlite import SQLiteStore
from gitstafette.store.sqlite.errors import as_store_error
from tests.store.test_store_suite import REPO_A, event


def _sqlite_error(kind: type[sqlite3.Error], code: int | None) -> sqlite3.Error:
    error = kind("induced by the test")
    if code is not None:
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY), True),
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_LOCKED), True),
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_IOERR_WRITE), True),  # an extended code
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_FULL), True),
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_CANTOPEN), True),
        (_sqlite_error(sqlite3.OperationalError, None), True),
        (_sqlite_error(sqlite3.DatabaseError, sqlite3.SQLITE_CORRUPT), False),
        (_sqlite_error(sqlite3.DatabaseError, sqlite3.SQLITE_NOTADB), False),
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_SCHEMA), False),
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_ERROR), False),  # e.g. no such table
        (_sqlite_error(sqlite3.IntegrityError, sqlite3.SQLITE_CONSTRAINT_UNIQUE), False),
        (_sqlite_error(sqlite3.OperationalError, sqlite3.SQLITE_READONLY), False),  # the file's permissions
        (_sqlite_error(sqlite3.ProgrammingError, None), False),  # a closed connection: a bug
    ],
)
def test_sqlite_errors_are_mapped_by_result_code(error: sqlite3.Error, transient: bool) -> None:
    mapped = as_store_error(error, "read")
    assert type(mapped) is (StoreUnavailable if transient else StoreError)
    assert str(mapped).startswith("SQLite read failed: induced by the test")


async def test_a_sqlite_file_that_is_no_database_is_a_store_error_not_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"not a database, and never one" * 200)
    with pytest.raises(StoreError, match="cannot open SQLite store") as error:
        await SQLiteStore(str(path)).open()
    assert not isinstance(error.value, StoreUnavailable)


async def test_a_sqlite_commit_that_violates_the_schema_is_a_store_error(tmp_path: Path) -> None:
    async with SQLiteStore(str(tmp_path / "events.db")) as store:
        await store.append(event("d1"))

        def duplicate(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (REPO_A, 1, "ci", "sent", 1))
            connection.execute("INSERT INTO events (repository_id, sequence) VALUES (?, ?)", (REPO_A, 1))

        with pytest.raises(StoreError) as error:
            await store._write(duplicate)
        assert not isinstance(error.value, StoreUnavailable)
        assert isinstance(error.value.__cause__, sqlite3.IntegrityError)
        # The group was rolled back, and the writer goes on.
        assert await store.audit(REPO_A) == []
        assert (await store.append(event("d2"))).event.sequence == 2


REDIS_ERRORS: list[tuple[redis_errors.RedisError | OSError, bool]] = [
    (redis_errors.ConnectionError("Connection refused"), True),
    (redis_errors.TimeoutError("Timeout reading from socket"), True),
    (redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), True),
    (redis_errors.ReadOnlyError("You can't write against a read only replica."), True),
    (redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), True),
    (redis_errors.TryAgainError("Multiple keys request during rehashing of slot"), True),
    (ConnectionResetError("Connection reset by peer"), True),
    (redis_errors.AuthenticationError("invalid username-password pair"), False),
    (redis_errors.AuthorizationError("NOAUTH Authentication required."), False),
    (redis_errors.NoPermissionError("this user has no permissions to run the 'evalsha' command"), False),
    (redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    (redis_errors.ResponseError("Error running script (call to f_...): @user_script:12: bad argument"), False),
    (redis_errors.DataError("Invalid input of type: 'NoneType'"), False),
]


@pytest.mark.parametrize(("error", "transient"), REDIS_ERRORS, ids=[type(e).__name__ for e, _ in REDIS_ERRORS])
def test_redis_errors_are_mapped_by_kind(error: Exception, transient: bool) -> None:
    connections = RedisConnections(RedisSettings.from_url("redis://127.0.0.1:1/0"))
    with pytest.raises(StoreError) as mapped, connections.mapped("storing an event"):
        raise error
    assert type(mapped.value) is (StoreUnavailable if transient else StoreError)
    assert mapped.value.__cause__ is error
    assert "storing an event" in str(mapped.value)


def test_the_errors_form_one_tree() -> None:
    from gitstafette.server.auth import AuthError

    assert issubclass(StoreUnavailable, StoreError)
    assert issubclass(StoreError, GitstafetteError)
    assert issubclass(AuthError, GitstafetteError)
