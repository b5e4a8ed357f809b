"""Errors raised by gitstafette.

GitstafetteError
├── ConfigError            bad flag, environment variable or URL
├── WebhookRejected        a webhook request that must be refused (carries the HTTP status)
├── AuthError              a gRPC call refused: no or an unknown token, a repository outside its grant
│                          (carries the gRPC status)
└── StoreError             the store failed, and trying again will not help: refused credentials or
    │                      permissions, data of the wrong type, a script error, a corrupt file, a schema
    │                      or constraint violation. A webhook is answered 500, a stream ends with INTERNAL,
    │                      and it is logged as an error (a Sentry event).
    └── StoreUnavailable   the store cannot serve right now (unreachable, timed out, loading, read-only
                           during a failover; SQLite locked, busy, an I/O error, the disk full): a webhook
                           is answered 503 so that its sender redelivers, a stream waits for the store.

The backends raise these only (``store/redis/connection.py::RedisConnections.mapped``,
``store/sqlite/errors.py::as_store_error``); the server tells the two store errors apart, never a library's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

__all__ = ["AuthError", "ConfigError", "GitstafetteError", "StoreError", "StoreUnavailable", "WebhookRejected"]


class GitstafetteError(Exception):
    """Base class of every error gitstafette raises on purpose."""

    def __repr__(self) -> str:
        """``WebhookRejected(status_code=400, detail='…')`` for an error that carries fields; else Exception's."""
        fields = vars(self)
        if not fields:
            return super().__repr__()
        return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in fields.items())})"


class ConfigError(GitstafetteError):
    """A configuration value is invalid; the message names it."""


class WebhookRejected(GitstafetteError):
    """A webhook request is refused with ``status_code`` and a message for the sender."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class AuthError(GitstafetteError):
    """A call is refused: the gRPC status and a message for the caller (never containing a token)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreError(GitstafetteError):
    """The event store failed, and the same operation is expected to fail again: an operator must look."""


class StoreUnavailable(StoreError):
    """The event store cannot serve right now; the operation may succeed later (retry, redeliver)."""
