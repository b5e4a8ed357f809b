"""When to retry a delivery, and how long to wait: pure functions, no I/O.

A target's answer decides an event's fate:

    2xx                          acknowledged
    408, 429, 5xx, no answer     retried (timeouts, refused or dropped connections)
    any other status             dead-lettered at once (a 4xx will not get better by asking again)

Waits grow exponentially with *full jitter* (a random wait between zero and the exponential bound), so
many clients that lost the same target do not come back in step; a ``Retry-After`` from the target
is a floor under that wait, itself capped.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gitstafette._runtime import Backoff

__all__ = ["RetryPolicy", "Verdict", "parse_retry_after", "verdict_for_status"]

Verdict = Literal["ack", "retry", "dead-letter"]

#: Statuses that say "not now" rather than "never".
RETRYABLE_STATUSES = frozenset({408, 429})


def verdict_for_status(status_code: int) -> Verdict:
    """What a target's HTTP status means for the event."""
    if 200 <= status_code < 300:
        return "ack"
    if status_code in RETRYABLE_STATUSES or 500 <= status_code < 600:
        return "retry"
    return "dead-letter"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or invalid.

    A date in the past means "now" (0 s). ``now`` is Unix time, for tests.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate leaves "-0000" naive
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How one event is retried.

    :param backoff: waits between attempts.
    :param retry_after_max_s: a target's ``Retry-After`` is honoured up to this long.
    :param max_age_s: an event still failing this long after its first attempt is dead-lettered.
    """

    backoff: Backoff
    retry_after_max_s: float
    max_age_s: float

    def delay_s(
        self, attempt: int, retry_after_s: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """The wait before the retry that follows failed attempt ``attempt`` (from 0)."""
        delay = self.backoff.delay_s(attempt, rng)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay

    def gives_up(self, retrying_for_s: float, next_delay_s: float) -> bool:
        """True when waiting ``next_delay_s`` more would take the event past its maximum age."""
        return retrying_for_s + next_delay_s > self.max_age_s
