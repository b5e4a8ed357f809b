"""Errors raised by gitstafette.

GitstafetteError
├── ConfigError            bad flag, environment variable or URL
├── WebhookRejected        a webhook request that must be refused (carries the HTTP status)
└── StoreError             the store failed
    └── StoreUnavailable   the store cannot be reached right now (retry later)
"""

from __future__ import annotations

__all__ = ["ConfigError", "GitstafetteError", "StoreError", "StoreUnavailable", "WebhookRejected"]


class GitstafetteError(Exception):
    """Base class of every error gitstafette raises on purpose."""


class ConfigError(GitstafetteError):
    """A configuration value is invalid; the message names it."""


class WebhookRejected(GitstafetteError):
    """A webhook request is refused with ``status_code`` and a message for the sender."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail

    def __repr__(self) -> str:
        return f"WebhookRejected(status_code={self.status_code!r}, detail={self.detail!r})"


class StoreError(GitstafetteError):
    """The event store failed."""


class StoreUnavailable(StoreError):
    """The event store cannot be reached; the operation may succeed later."""
