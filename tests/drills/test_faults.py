"""The fault drills of bench/faults.py, in a short form: the same code with real processes and a small burst.
Whatever breaks in the middle of the burst (the server or the client killed, the target gone, Redis killed, the
server paused), every webhook the server accepted reaches the target, and a webhook posted once the fault is
over goes through."""

from __future__ import annotations

import pytest
from bench.faults import DRILLS, DrillOptions, run_drill

SHORT = DrillOptions(webhooks=60, concurrency=4, hold_s=1.0, drain_timeout_s=20.0, send_timeout_s=60.0)


@pytest.mark.parametrize("drill", DRILLS)
def test_a_fault_in_the_middle_of_a_burst_loses_nothing(drill: str) -> None:
    result = run_drill(drill, SHORT)

    print(result)  # the figures, for the log of a run
    assert not result.error, result
    assert 0 < result.accepted_at_fault < result.sent, f"the fault did not strike mid-burst: {result}"
    assert result.accepted == result.sent == SHORT.webhooks, result
    assert result.lost == 0, f"accepted but never delivered: {result.lost_ids}"
    assert result.delivered == result.accepted
    assert result.unexpected == 0, result
    assert result.recovery_s is not None, f"nothing went through after the fault: {result}"
