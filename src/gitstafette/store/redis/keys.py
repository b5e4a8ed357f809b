"""The Redis store's key names, and how the names and values Redis answers with read back."""

from __future__ import annotations

from gitstafette import constants

__all__ = ["Keys", "sequence_of", "text"]


class Keys:
    """The installation's key names: ``constants.REDIS_*_KEY`` after ``<prefix>:``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.repositories = self._key(constants.REDIS_REPOSITORIES_KEY)
        self.dead_letters = self._key(constants.REDIS_DEAD_LETTERS_KEY)
        self.dead_letters_by_time = self._key(constants.REDIS_DEAD_LETTERS_BY_FAILED_AT_NS_KEY)
        self.notices = self._key(constants.REDIS_NOTICES_KEY)
        self.lease_released = self._key(constants.REDIS_LEASE_RELEASED_KEY)
        self.replays_requested = self._key(constants.REDIS_REPLAYS_REQUESTED_KEY)

    def _key(self, template: str, **names: str) -> str:
        return f"{self.prefix}:{template.format(**names)}"

    def repository(self, repository_id: str) -> str:
        return self._key(constants.REDIS_REPOSITORY_KEY, repository_id=repository_id)

    def events(self, repository_id: str) -> str:
        return self._key(constants.REDIS_EVENTS_KEY, repository_id=repository_id)

    def deliveries(self, repository_id: str) -> str:
        return self._key(constants.REDIS_DELIVERIES_KEY, repository_id=repository_id)

    def received_at(self, repository_id: str) -> str:
        return self._key(constants.REDIS_RECEIVED_AT_NS_KEY, repository_id=repository_id)

    def cursors(self, repository_id: str) -> str:
        return self._key(constants.REDIS_CURSORS_KEY, repository_id=repository_id)

    def replays(self, repository_id: str, client_id: str) -> str:
        return self._key(constants.REDIS_REPLAYS_KEY, repository_id=repository_id, client_id=client_id)

    def audit(self, repository_id: str) -> str:
        return self._key(constants.REDIS_AUDIT_KEY, repository_id=repository_id)

    def lease(self, repository_id: str, client_id: str) -> str:
        return self._key(constants.REDIS_LEASE_KEY, repository_id=repository_id, client_id=client_id)

    def lease_tokens(self, repository_id: str) -> str:
        return self._key(constants.REDIS_LEASE_TOKENS_KEY, repository_id=repository_id)


def text(value: bytes | str | None) -> str:
    """A name or value as Redis answers it (bytes; None for none) as text."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def sequence_of(entry_id: bytes | str | None) -> int:
    """``b"42-0"`` → 42."""
    return int(text(entry_id).partition("-")[0])
