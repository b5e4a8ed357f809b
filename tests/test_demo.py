"""``gitstafette demo``: a newcomer's first minute, run as they would run it."""

from __future__ import annotations

import subprocess
import sys

from tests.utils import FIXTURES


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitstafette", "demo", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_relays_the_builtin_payload_and_says_what_arrived() -> None:
    result = demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "first push webhook (1511 bytes): 201" in out
    assert "second push webhook (1511 bytes): 201" in out
    assert "received 1511 bytes (identical to what was sent)" in out
    assert "X-GitHub-Event: push" in out and "X-GitHub-Hook-Installation-Target-ID: 186853002" in out
    assert "(missing)" not in out


def test_demo_takes_a_payload_file() -> None:
    path = FIXTURES / "pull_request.opened.0.json"
    result = demo("--payload", str(path), "--event", "pull_request")
    assert result.returncode == 0, result.stderr
    assert f"({path.stat().st_size} bytes) (identical" not in result.stdout  # sizes appear once per line
    assert f"received {path.stat().st_size} bytes (identical to what was sent)" in result.stdout
    assert "X-GitHub-Event: pull_request" in result.stdout


def test_demo_refuses_a_payload_without_a_repository() -> None:
    result = demo("--payload", str(FIXTURES / "organization.member_added.0.json"), "--event", "organization")
    assert result.returncode == 1
    assert "no repository.id" in result.stderr
