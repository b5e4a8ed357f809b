"""A server that cannot start (a port taken, an address it cannot have, a store it cannot open) says what
failed in one line and exits 1: no traceback, no line of gRPC's C core, no "stopped" for what never started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _start_server(*args: str) -> subprocess.CompletedProcess[str]:
    options = {"--host": "127.0.0.1", "--http-port": "0", "--grpc-port": "0", "--store": "memory://"}
    options.update(zip(args[::2], args[1::2], strict=True))
    env = dict(os.environ)
    env.pop("GRPC_VERBOSITY", None)  # the command's own setting is what is tested
    return subprocess.run(
        [sys.executable, "-m", "gitstafette", "server", *[item for pair in options.items() for item in pair]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"gitstafette: cannot start the server: {expected}"]


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_a_taken_port_is_named_in_one_line(flag: str, taken_port: int) -> None:
    result = _start_server(flag, str(taken_port))
    if flag == "--grpc-port":
        expected = f"cannot listen for gRPC on 127.0.0.1:{taken_port}: the port {taken_port} is taken"
        _assert_one_line(result, f"{expected} (another process listens on it)")
    else:
        _assert_one_line(result, f"cannot listen on 127.0.0.1:{taken_port}: Address already in use")


def test_a_host_that_is_no_address_is_named_as_a_lookup_failure_not_a_taken_port() -> None:
    result = _start_server("--host", "999.1.1.1")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "gitstafette: cannot start the server: cannot listen for gRPC on 999.1.1.1:0: "
        "the host '999.1.1.1' is neither an address of this machine nor a name that resolves"
    ), line


def test_an_address_of_another_machine_is_named_so() -> None:
    result = _start_server("--host", "192.0.2.1")  # TEST-NET-1 (RFC 5737): never this machine's
    _assert_one_line(result, "cannot listen for gRPC on 192.0.2.1:0: '192.0.2.1' is not an address of this machine")


def test_a_sqlite_store_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "events.db"
    result = _start_server("--store", f"sqlite:///{path}")
    _assert_one_line(result, f"cannot open SQLite store {path}: cannot create {path.parent}: File exists")


def test_an_unreachable_redis_store_is_named() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        port = closed.getsockname()[1]
        result = _start_server("--store", f"redis://127.0.0.1:{port}/0")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"gitstafette: cannot start the server: Redis redis://127.0.0.1:{port}/0 is unreachable"), (
        line
    )
