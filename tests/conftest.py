from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.utils import RecordingTarget
from tests.utils import ServerProcess, running_server


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
