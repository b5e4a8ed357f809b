from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.utils import RecordingTarget


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    """A webhook target that records every request."""
    with RecordingTarget() as recording:
        yield recording
