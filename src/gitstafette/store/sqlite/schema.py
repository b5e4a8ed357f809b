"""The SQLite store's tables, the connection settings every connection gets, and the row of an event."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gitstafette.model import WebhookEvent

__all__ = ["EVENT_COLUMNS", "SCHEMA", "connect", "row_to_event"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    repository_id   TEXT PRIMARY KEY,
    repository_name TEXT NOT NULL DEFAULT '',
    last_sequence   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    repository_id   TEXT NOT NULL,
    sequence        INTEGER NOT NULL,
    delivery_id     TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    repository_name TEXT NOT NULL,
    received_at_ns  INTEGER NOT NULL,
    headers         TEXT NOT NULL,
    body            BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_sequence ON events (repository_id, sequence);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_delivery ON events (repository_id, delivery_id);
CREATE TABLE IF NOT EXISTS cursors (
    client_id     TEXT NOT NULL,
    repository_id TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    PRIMARY KEY (client_id, repository_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    client_id     TEXT NOT NULL,
    repository_id TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    delivery_id   TEXT NOT NULL,
    reason        TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    failed_at_ns  INTEGER NOT NULL,
    PRIMARY KEY (client_id, repository_id, sequence)
);
CREATE TABLE IF NOT EXISTS replays (
    client_id     TEXT NOT NULL,
    repository_id TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    PRIMARY KEY (client_id, repository_id, sequence)
);
CREATE TABLE IF NOT EXISTS audit (
    repository_id TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    client_id     TEXT NOT NULL,
    action        TEXT NOT NULL,
    at_ns         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_event ON audit (repository_id, sequence);
"""

EVENT_COLUMNS = "repository_id, sequence, delivery_id, event_type, repository_name, received_at_ns, headers, body"


def connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: each commit is fsynced, so a 201 survives a power cut too; group commit keeps that cheap.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


def row_to_event(row: tuple[Any, ...]) -> WebhookEvent:
    repository_id, sequence, delivery_id, event_type, name, received_at_ns, headers, body = row
    return WebhookEvent(
        repository_id=repository_id,
        delivery_id=delivery_id,
        event_type=event_type,
        body=bytes(body),
        headers=tuple((k, v) for k, v in json.loads(headers)),
        received_at_ns=received_at_ns,
        repository_name=name,
        sequence=sequence,
    )
