"""The backoff every retrying loop shares (_runtime.Backoff and Retrying)."""

from __future__ import annotations

import pytest

from gitstafette._runtime import Backoff, Retrying


def test_bound_doubles_up_to_the_cap_and_jitter_stays_under_it():
    backoff = Backoff(0.1, 2.0)
    assert [backoff.bound_s(n) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert backoff.bound_s(1000) == 2.0
    assert backoff.delay_s(3, rng=lambda: 0.5) == pytest.approx(0.4)
    assert Backoff(0.1, 2.0, jitter=False).delay_s(3, rng=lambda: 0.5) == pytest.approx(0.8)


def test_retrying_tells_the_first_failure_and_the_recovery_apart():
    retrying = Backoff(0.1, 2.0, jitter=False).retrying()
    assert not retrying.succeeded(), "a success with no failure before ends no run"
    assert retrying.failed() is True
    assert retrying.failed() is False
    assert retrying.failing
    assert retrying.succeeded() is True
    assert not retrying.failing
    assert retrying.failed() is True, "a new run after a recovery is logged again"


async def test_pause_sleeps_the_backoff_of_the_run_and_at_most_the_limit():
    slept: list[float] = []

    async def sleep(delay_s: float) -> None:
        slept.append(delay_s)

    retrying = Retrying(Backoff(0.1, 2.0, jitter=False), sleep=sleep)
    for _ in range(6):
        retrying.failed()
        await retrying.pause()
    retrying.failed()
    await retrying.pause(at_most_s=0.3)
    retrying.failed()
    await retrying.pause(at_most_s=-1)
    retrying.succeeded()
    retrying.failed()
    await retrying.pause()
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 0.3, 0.0, 0.1])
