from __future__ import annotations

from pathlib import Path

import pytest

from tests.tls.utils import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA of its own with a server certificate for localhost and 127.0.0.1, in a temporary folder."""
    return Pki(tmp_path / "pki")
