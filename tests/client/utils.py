"""For the client's tests: a recording webhook target, the client as a child process, and polling helpers."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.utils import FIXTURES, ChildProcess, ServerProcess, github_request, metric_sum, running

PUSH = FIXTURES / "push.0.json"


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20, message: str = "condition", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass(frozen=True)
class Recorded:
    """One request the target received, and the status it answered."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def delivery_id(self) -> str:
        return self.header("X-GitHub-Delivery") or ""


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-request (a killed relay) is part of the tests, not an error."""


class RecordingTarget:
    """A webhook receiver on loopback: records every request and answers as told.

    ``answer(request) -> status`` decides the status of each POST (default 200); ``health_status`` is
    what ``GET /health`` answers; ``stop()`` closes the port and every open connection, so connections
    are refused until ``start()`` listens on the same port again.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answer: Callable[[Recorded], int] = lambda request: 200
        self.health_status = 200
        self.delay_s = 0.0
        self.port = 0
        self._lock = threading.Lock()
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def start(self) -> RecordingTarget:
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with target._lock:
                    target._connections.add(self.connection)

            def finish(self) -> None:
                with target._lock:
                    target._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def _reply(self, status: int) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                self._reply(target.health_status if self.path == "/health" else 404)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = Recorded("POST", self.path, tuple(self.headers.items()), body, 0)
                status = target.answer(request)
                if target.delay_s:
                    time.sleep(target.delay_s)
                with target._lock:
                    target.requests.append(Recorded(request.method, request.path, request.headers, body, status))
                self._reply(status)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> RecordingTarget:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def posts(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def delivered(self) -> list[Recorded]:
        """POSTs answered 2xx, in the order they arrived."""
        return [r for r in self.posts() if 200 <= r.status < 300]

    def delivered_ids(self) -> list[str]:
        return [r.delivery_id for r in self.delivered()]


class ClientProcess(ChildProcess):
    """``gitstafette client`` as a child process with its health port on a free port (read from its ready file)."""

    name = "client"

    def __init__(
        self,
        servers: list[str],
        repositories: list[str],
        target: str,
        client_id: str,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(env)
        self.command = [
            sys.executable,
            "-m",
            "gitstafette",
            "client",
            "--insecure",
            "--server",
            ",".join(servers),
            "--repositories",
            ",".join(repositories),
            "--target",
            target,
            "--client-id",
            client_id,
            "--health-host",
            "127.0.0.1",
            "--health-port",
            "0",
            "--reconnect-max-delay",
            "1s",
            "--retry-max-delay",
            "0.5s",
            *args,
        ]
        self.health_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def _on_ready(self, ready: dict[str, Any]) -> None:
        self.health_port = ready["health_port"]

    def start(self, timeout: float = 30) -> ClientProcess:
        self.health_port = 0
        self._spawn(self.command, timeout)
        return self

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/health", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` with ``labels`` on /metrics (0 when absent)."""
        return metric_sum(self.url, name, **labels)

    def wait_connected(self, timeout: float = 20) -> dict[str, Any]:
        return wait_until(lambda: (h := self.health())["connected"] and h, timeout, "the client to connect")


@contextmanager
def running_client(
    server: ServerProcess | list[str],
    repositories: list[str],
    target: str,
    client_id: str = "test-client",
    *args: str,
    env: dict[str, str] | None = None,
) -> Iterator[ClientProcess]:
    servers = [server.grpc_target] if isinstance(server, ServerProcess) else server
    with running(ClientProcess(servers, repositories, target, client_id, *args, env=env)) as client:
        yield client


def post_webhook(http: httpx.Client, server: ServerProcess, path: Path = PUSH, repository_id: str = "") -> str:
    """Post one fixture as GitHub would (to ``repository_id`` when given); returns its delivery id."""
    headers, body, fixture_repository = github_request(path)
    if repository_id:
        headers["X-GitHub-Hook-Installation-Target-Type"] = "repository"
        headers["X-GitHub-Hook-Installation-Target-ID"] = repository_id
    response = http.post(f"{server.url}/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    return headers["X-GitHub-Delivery"]


def post_many(
    http: httpx.Client, server: ServerProcess, count: int, repository_id: str = "", threads: int = 8
) -> list[str]:
    """Post ``count`` webhooks from several threads at once; their delivery ids in the order the server stored them."""

    def post(_: int) -> tuple[int, str]:
        headers, body, _repository = github_request(PUSH)
        if repository_id:
            headers["X-GitHub-Hook-Installation-Target-ID"] = repository_id
        response = http.post(f"{server.url}/v1/github/", headers=headers, content=body)
        assert response.status_code == 201, response.text
        return int(response.json()["sequence"]), headers["X-GitHub-Delivery"]

    with ThreadPoolExecutor(threads) as pool:
        stored = list(pool.map(post, range(count)))
    return [delivery_id for _, delivery_id in sorted(stored)]


def repository_of(path: Path = PUSH) -> str:
    return github_request(path)[2]


def duplicates(ids: list[str]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for item in ids:
        seen[item] = seen.get(item, 0) + 1
    return {k: v for k, v in seen.items() if v > 1}


def first_occurrences(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))
