"""The retry policy: which answers are retried, how long the waits are, and Retry-After."""

from __future__ import annotations

import email.utils

import pytest

from gitstafette._runtime import Backoff
from gitstafette.client.retry import RetryPolicy, parse_retry_after, verdict_for_status


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_acknowledged(status: int) -> None:
    assert verdict_for_status(status) == "ack"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_timeouts_throttling_and_5xx_are_retried(status: int) -> None:
    assert verdict_for_status(status) == "retry"


@pytest.mark.parametrize("status", [301, 302, 304, 400, 401, 403, 404, 405, 409, 410, 413, 422, 451, 600])
def test_every_other_status_is_a_dead_letter_at_once(status: int) -> None:
    assert verdict_for_status(status) == "dead-letter"


def test_backoff_bound_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=30)
    bounds = [backoff.bound_s(n) for n in range(12)]
    assert bounds[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert all(later >= earlier for earlier, later in zip(bounds, bounds[1:], strict=False))
    assert max(bounds) == 30
    assert backoff.bound_s(10_000) == 30


def test_full_jitter_spans_zero_to_the_bound() -> None:
    backoff = Backoff(initial_s=0.5, max_s=8)
    assert backoff.delay_s(3, rng=lambda: 0.0) == 0.0
    assert backoff.delay_s(3, rng=lambda: 1.0) == pytest.approx(4.0)
    assert backoff.delay_s(3, rng=lambda: 0.25) == pytest.approx(1.0)
    for attempt in range(20):
        assert 0 <= backoff.delay_s(attempt) <= backoff.bound_s(attempt)


def test_retry_after_is_a_floor_under_the_jittered_wait_and_is_capped() -> None:
    policy = RetryPolicy(Backoff(0.1, 30), retry_after_max_s=60, max_age_s=3600)
    assert policy.delay_s(0, retry_after_s=5, rng=lambda: 1.0) == pytest.approx(5)
    assert policy.delay_s(10, retry_after_s=5, rng=lambda: 1.0) == pytest.approx(30)
    assert policy.delay_s(0, retry_after_s=10_000, rng=lambda: 0.0) == pytest.approx(60)
    assert policy.delay_s(0, retry_after_s=None, rng=lambda: 1.0) == pytest.approx(0.1)


def test_an_event_is_given_up_once_the_next_wait_passes_its_maximum_age() -> None:
    policy = RetryPolicy(Backoff(0.1, 30), retry_after_max_s=60, max_age_s=100)
    assert not policy.gives_up(retrying_for_s=50, next_delay_s=30)
    assert policy.gives_up(retrying_for_s=80, next_delay_s=30)
    assert policy.gives_up(retrying_for_s=101, next_delay_s=0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), (None, None), ("", None), ("soon", None), ("-5", None), ("1.5", None)],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0  # in the past: now
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", now=now) is None  # no zone: not an HTTP date
