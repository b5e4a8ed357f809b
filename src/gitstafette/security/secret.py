"""Secret: a value that never shows itself in a repr, a log line or an error message."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["Secret"]


class Secret:
    """A token, password or webhook secret that never shows itself: ``repr``, ``str`` and f-strings print
    ``**********``; only :meth:`reveal` gives the value, at the one place that needs it.

    Equality is checked in constant time, so comparing a presented secret leaks nothing through timing.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, hashlib.sha256(self._value.encode()).digest()))

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    @classmethod
    def optional(cls, value: str | None) -> Secret | None:
        """A Secret for a non-empty value (surrounding whitespace dropped), else None."""
        value = (value or "").strip()
        return cls(value) if value else None
