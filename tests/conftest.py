from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.client.utils import RecordingTarget
from tests.utils import ServerProcess, running_server

#: Fuzzing (hypothesis): in CI a bounded, repeatable number of examples per test; for a long run by hand,
#: GITSTAFETTE_FUZZ_EXAMPLES=20000 (then examples are random, and failures are kept in .hypothesis/).
FUZZ_EXAMPLES_ENV = "GITSTAFETTE_FUZZ_EXAMPLES"
_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True, suppress_health_check=_SLOW_DATA)
_LONG_EXAMPLES = int(os.environ.get(FUZZ_EXAMPLES_ENV) or 0) or 1
settings.register_profile("long", max_examples=_LONG_EXAMPLES, deadline=None, suppress_health_check=_SLOW_DATA)
settings.load_profile("long" if os.environ.get(FUZZ_EXAMPLES_ENV) else "ci")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server process with a SQLite store in a temporary folder, watching every repository."""
    with running_server("--store", f"sqlite:///{tmp_path / 'events.db'}") as process:
        yield process


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    """A webhook target that records every request; tests set what it answers."""
    with RecordingTarget() as recording:
        yield recording


@pytest.fixture
def default_gc_thresholds() -> Iterator[tuple[int, int, int]]:
    """Python's default garbage collector thresholds for the test, whatever they were; put back afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*before)
