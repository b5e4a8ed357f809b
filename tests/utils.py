"""Real processes on free loopback ports, and GitHub-shaped requests, for the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "github"


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels`` (among others) on ``url``/metrics, parsed with
    prometheus-client's text parser (0 when there are none)."""
    response = httpx.get(f"{url}/metrics", timeout=5)
    response.raise_for_status()
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def fixture_files() -> list[Path]:
    files = sorted(FIXTURES.glob("*.json"))
    assert files, f"no GitHub fixtures in {FIXTURES}"
    return files


def github_request(path: Path, delivery_id: str | None = None) -> tuple[dict[str, str], bytes, str]:
    """Headers and body as GitHub sends the fixture ``path``; returns (headers, body, repository id)."""
    body = path.read_bytes()
    payload = json.loads(body)
    event = path.name.split(".")[0]
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "292430182",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "Content-Type": "application/json",
    }
    repository = payload.get("repository")
    if repository:
        headers["X-GitHub-Hook-Installation-Target-Type"] = "repository"
        headers["X-GitHub-Hook-Installation-Target-ID"] = str(repository["id"])
        return headers, body, str(repository["id"])
    headers["X-GitHub-Hook-Installation-Target-Type"] = "organization"
    return headers, body, ""


class ChildProcess:
    """A gitstafette command as a child process whose stderr is kept, line by line, in ``lines``.

    It counts as started once it has written its ``--ready-file`` (JSON, with its pid); a subclass takes
    the ports from it (``_on_ready``).
    """

    name = "process"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.ready_file = Path(tempfile.gettempdir()) / f"gitstafette-{self.name}-{uuid.uuid4().hex}.json"

    def _on_ready(self, ready: dict[str, Any]) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 30) -> Self:
        raise NotImplementedError

    def _spawn(self, command: list[str], timeout: float) -> None:
        self.lines = []
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [*command, "--ready-file", str(self.ready_file)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        self._drainer = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
        self._drainer.start()
        deadline = time.monotonic() + timeout
        ready = self.ready()
        while ready is None and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            ready = self.ready()
        if ready is None:
            exited = self.process.poll() is not None
            self.kill()
            what = "exited during startup" if exited else "did not start"
            raise RuntimeError(f"{self.name} {what}:\n" + self.log())
        self._on_ready(ready)

    def ready(self) -> dict[str, Any] | None:
        """What the ready file says, once this process (its pid) has written it."""
        try:
            ready: dict[str, Any] = json.loads(self.ready_file.read_text())
        except FileNotFoundError:
            return None
        assert self.process is not None
        return ready if ready["pid"] == self.process.pid else None

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)
        process.stderr.close()

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._drainer.join(5)
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None:
            self._drainer.join(5)
        self.ready_file.unlink(missing_ok=True)  # a killed process leaves it behind

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ServerProcess(ChildProcess):
    """``gitstafette server`` as a child process on ports it chose itself (port 0, read from its ready file)."""

    name = "server"

    def __init__(self, *args: str, env: dict[str, str] | None = None, program: list[str] | None = None) -> None:
        super().__init__(env)
        self.args = args
        #: what runs ``server …``: gitstafette itself, or a script that wraps it (a test double of a store)
        self.program = program or [sys.executable, "-m", "gitstafette"]
        self.http_port = 0
        self.grpc_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _on_ready(self, ready: dict[str, Any]) -> None:
        self.http_port, self.grpc_port = ready["http_port"], ready["grpc_port"]

    def start(self, timeout: float = 30) -> ServerProcess:
        command = [*self.program, "server", "--host", "127.0.0.1"]
        if "--http-port" not in self.args:
            command += ["--http-port", "0"]
        if "--grpc-port" not in self.args:
            command += ["--grpc-port", "0"]
        self._spawn([*command, *self.args], timeout)
        return self

    def wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server not ready")


@contextmanager
def running_server(
    *args: str, env: dict[str, str] | None = None, program: list[str] | None = None
) -> Iterator[ServerProcess]:
    with running(ServerProcess(*args, env=env, program=program), stop_timeout=20) as server:
        yield server


Child = TypeVar("Child", bound=ChildProcess)


@contextmanager
def running(child: Child, stop_timeout: float = 30) -> Iterator[Child]:
    """Start ``child``; afterwards stop it (SIGTERM), and kill it if it does not stop in ``stop_timeout``."""
    child.start()
    try:
        yield child
    finally:
        if child.alive():
            try:
                child.stop(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        child.kill()
