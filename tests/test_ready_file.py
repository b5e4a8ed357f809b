"""--ready-file: once listening, the server and the client write their pid and bound ports as JSON, whole
(a rename), and remove it on shutdown; the startup line of the log stays as it was, for people."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gitstafette._ready_file import ReadyFile
from tests.client.utils import RecordingTarget, running_client
from tests.utils import running_server


def test_the_file_is_written_whole_and_replaces_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    path.write_text("left by an earlier process")
    ready = ReadyFile(str(path))
    ready.write(http_port=1323, host="127.0.0.1")
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "http_port": 1323, "host": "127.0.0.1"}
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644
    ready.remove()
    assert not path.exists()
    ready.remove()  # twice is fine


def test_only_the_file_this_process_wrote_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    path.write_text("another process's")
    ReadyFile(str(path)).remove()
    assert path.read_text() == "another process's"


def test_without_a_path_nothing_is_written(tmp_path: Path) -> None:
    ready = ReadyFile("")
    ready.write(http_port=1)
    ready.remove()


def test_a_folder_that_is_missing_fails_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ready.json"
    with pytest.raises(FileNotFoundError, match=f"cannot write the ready file {path}: No such file"):
        ReadyFile(str(path)).write(http_port=1)


def test_the_server_says_where_it_listens_and_removes_the_file_on_shutdown() -> None:
    with running_server("--store", "memory://") as server:
        ready = server.ready()
        assert server.process is not None and ready is not None
        assert ready == {
            "pid": server.process.pid,
            "host": "127.0.0.1",
            "http_port": server.http_port,
            "grpc_port": server.grpc_port,
        }
        assert httpx.get(f"http://127.0.0.1:{ready['http_port']}/healthz", timeout=5).status_code == 200
        # The line people read is still there, unchanged.
        assert f"listening: http=127.0.0.1:{server.http_port} grpc=127.0.0.1:{server.grpc_port} " in server.log()
        assert server.stop(signal.SIGTERM) == 0, server.log()
        assert not server.ready_file.exists()


def test_the_client_says_where_its_health_port_listens_and_removes_the_file_on_shutdown() -> None:
    with (
        running_server("--store", "memory://") as server,
        RecordingTarget() as target,
        running_client(server, ["1"], target.url) as client,
    ):
        ready = client.ready()
        assert client.process is not None and ready is not None
        assert ready == {"pid": client.process.pid, "health_host": "127.0.0.1", "health_port": client.health_port}
        assert httpx.get(f"http://127.0.0.1:{ready['health_port']}/health", timeout=5).status_code == 200
        assert f"listening: health=127.0.0.1:{client.health_port} " in client.log()
        assert client.stop(signal.SIGTERM) == 0, client.log()
        assert not client.ready_file.exists()


def test_a_ready_file_that_cannot_be_written_stops_the_server_at_startup(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "ready.json"
    argv = [sys.executable, "-m", "gitstafette", "server", "--store", "memory://", "--host", "127.0.0.1"]
    argv += ["--http-port", "0", "--grpc-port", "0"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "GITSTAFETTE_READY_FILE": str(missing)}
    )
    assert done.returncode == 1, done.stderr
    assert f"gitstafette: cannot start the server: cannot write the ready file {missing}" in done.stderr
    assert not missing.parent.exists()
