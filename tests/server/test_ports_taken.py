"""A port that is already taken stops the server at once with a message that says so, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_a_taken_port_is_a_clear_error(tmp_path: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--http-port" if flag == "--grpc-port" else "--grpc-port"
        result = subprocess.run(
            [
                sys.executable, "-m", "gitstafette", "server", "--host", "127.0.0.1", flag, str(port), other, "0",
                "--store", f"sqlite:///{tmp_path / 'events.db'}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert "gitstafette: cannot start the server" in result.stderr
    assert str(port) in result.stderr
    assert "Traceback" not in result.stderr
