"""The Cloud Run ingress as a child process: HAProxy started as its container starts it (the ``CMD`` of
``deploy/cloudrun/ingress.Containerfile``, with ``deploy/cloudrun/haproxy.cfg`` as it is), in front of a
server started on free loopback ports, on one free loopback port of its own.

HAProxy is a tool of the machine (``apt-get install haproxy``): without it the tests that need it are
skipped, or fail with GITSTAFETTE_REQUIRE_TOOLS=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.utils import ROOT, ChildProcess, ServerProcess, running

__all__ = ["CONFIG", "CONTAINERFILE", "Ingress", "container_command", "haproxy_or_skip", "one_port"]

CONFIG = ROOT / "deploy" / "cloudrun" / "haproxy.cfg"
CONTAINERFILE = ROOT / "deploy" / "cloudrun" / "ingress.Containerfile"
REQUIRE_TOOLS_ENV = "GITSTAFETTE_REQUIRE_TOOLS"


def haproxy_or_skip() -> str:
    """The haproxy program; without it the test fails (GITSTAFETTE_REQUIRE_TOOLS=1) or is skipped."""
    program = shutil.which("haproxy")
    if program is None:
        reason = "haproxy is not installed (apt-get install haproxy)"
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_TOOLS_ENV}=1 says the tests that need it must run", pytrace=False)
        pytest.skip(f"{reason}; set {REQUIRE_TOOLS_ENV}=1 to make this a failure")
    return program


def container_command() -> list[str]:
    """The ingress container's ``CMD``, its configuration path in the image replaced by the repository's file."""
    match = re.search(r"^CMD (\[.*\])$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert match, f"no CMD [...] line in {CONTAINERFILE}"
    command: list[str] = json.loads(match.group(1))
    assert "/usr/local/etc/haproxy/haproxy.cfg" in command, command
    return [str(CONFIG) if part == "/usr/local/etc/haproxy/haproxy.cfg" else part for part in command]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Ingress(ChildProcess):
    """HAProxy on one free loopback port in front of ``server``'s two ports; ``timeout`` is its idle timeout
    (``GITSTAFETTE_PROXY_TIMEOUT``: the configuration's default when empty)."""

    name = "ingress"

    def __init__(self, server: ServerProcess, timeout: str = "") -> None:
        super().__init__()
        self.server = server
        self.timeout = timeout
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Ingress:
        command = container_command()
        command[0] = haproxy_or_skip()
        for _ in range(3):  # a free port taken by someone else before HAProxy binds it: another one
            self.port = _free_port()
            self.env.update(
                PORT=str(self.port),
                GITSTAFETTE_PROXY_BIND="127.0.0.1",
                GITSTAFETTE_HTTP_PORT=str(self.server.http_port),
                GITSTAFETTE_GRPC_PORT=str(self.server.grpc_port),
            )
            if self.timeout:
                self.env["GITSTAFETTE_PROXY_TIMEOUT"] = self.timeout
            self.lines = []
            self.process = subprocess.Popen(
                command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=self.env
            )
            self._drainer = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
            self._drainer.start()
            if self._wait_answering(timeout):
                return self
            self.kill()
        raise RuntimeError("HAProxy did not start:\n" + self.log())

    def _wait_answering(self, timeout: float) -> bool:
        """Until the server's /healthz answers through the one port; False when HAProxy exited first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False


@contextmanager
def one_port(server: ServerProcess, timeout: str = "") -> Iterator[Ingress]:
    """The ingress in front of the running ``server``, stopped (SIGTERM) afterwards."""
    with running(Ingress(server, timeout), stop_timeout=10) as ingress:
        yield ingress
