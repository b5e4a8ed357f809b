"""The processes under test, started by a bench on free loopback ports: ``gitstafette server`` and
``gitstafette client``; their ``/metrics`` counters; and the SIGTERM handler that lets a bench's ``finally``
stop them. (A ``redis-server`` of a bench's own is ``tests.redis_utils.RedisServer``, the suite's.)

They run ``python -m gitstafette`` with this interpreter, so they import the package as installed (editable:
whatever checkout it was installed from), unless ``src`` names the ``src`` folder of another checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from . import ROOT

__all__ = [
    "SRC_HELP",
    "STORE_HELP",
    "ClientUnderTest",
    "ServerUnderTest",
    "add_server_options",
    "child_environment",
    "client_counters",
    "free_port",
    "listening_ports",
    "raise_on_sigterm",
    "server_counters",
    "resolve_store",
    "source_folder",
]

#: the ``--store`` help of the benches that start a server
STORE_HELP = (
    "store of the server started here: sqlite (a file in a temporary folder), memory://, a full sqlite:///PATH "
    "URL, or redis://HOST:PORT/DB?prefix=NAME (the bench's keys stay there: use a database or prefix of your own)"
)

#: the ``--src`` help of the benches that start a server (and a client)
SRC_HELP = (
    "the src folder of a checkout: the server (and client) started here run its gitstafette, put first on their "
    "PYTHONPATH; none: the package as installed (editable: the checkout it was installed from)"
)


def source_folder(value: str) -> Path:
    """The ``type`` of ``--src``: a folder holding the ``gitstafette`` package, as an absolute path."""
    path = Path(value).resolve()
    if not (path / "gitstafette" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{value}: no gitstafette package in it (give the src folder of a checkout)")
    return path


def add_server_options(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--store`` and ``--src`` of a bench that starts the server (and the client): what the server stores in,
    and whose code they run."""
    group.add_argument("--store", default="sqlite", help=STORE_HELP)
    group.add_argument("--src", type=source_folder, metavar="DIR", help=SRC_HELP)


def raise_on_sigterm(signum: int, frame: Any) -> None:
    """``signal.signal(signal.SIGTERM, raise_on_sigterm)``: a SIGTERM sent to the bench unwinds it like Ctrl-C,
    so that its ``finally`` stops the processes it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_environment(src: Path | None) -> dict[str, str] | None:
    """The environment of a process under test: None (this process's, inherited) without ``src``; with it, this
    process's environment with ``src`` first on ``PYTHONPATH``, so that ``python -m gitstafette`` imports that
    checkout's code rather than the installed package's (a ``PYTHONPATH`` entry comes before site-packages)."""
    if src is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def resolve_store(store: str, tmpdir: str) -> tuple[str, str | None]:
    """(store URL for the server, SQLite file path or None)."""
    if store in ("sqlite", "sqlite://"):
        path = os.path.join(tmpdir, "bench.db")
        return f"sqlite:///{path}", path
    if store.startswith("sqlite:///"):
        path = store[len("sqlite:///") :]
        return store, path if path.startswith("/") else str(ROOT / path)
    if store in ("memory", "memory://"):
        return "memory://", None
    if store.startswith(("redis://", "rediss://")):
        return store, None
    raise SystemExit(f"--store: {store!r}: use sqlite, memory://, sqlite:///PATH or redis://HOST:PORT/DB?prefix=NAME")


class ServerUnderTest:
    """``python -m gitstafette server`` started by the bench, on free loopback ports; with ``src``, the code of
    that ``src`` folder (``child_environment``)."""

    def __init__(self, store: str, log_level: str, extra: list[str], src: Path | None = None) -> None:
        self.store = store
        self.log_level = log_level
        self.extra = extra
        self.src = src
        self.host = "127.0.0.1"
        self.http_port = 0
        self.grpc_port = 0
        self.command: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=200)
        self.log_lines = 0
        self._drainer: threading.Thread | None = None
        self.exit_code: int | None = None
        self.stop_s: float | None = None

    def start(self, timeout: float = 30) -> None:
        # At --log-level warning the server does not log its ports, so they are chosen here; a port can
        # be taken between this probe and the server's bind, hence the retries.
        for _attempt in range(3):
            self.http_port, self.grpc_port = free_port(self.host), free_port(self.host)
            command = [sys.executable, "-m", "gitstafette", "server", "--host", self.host]
            command += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
            command += ["--store", self.store, "--log-level", self.log_level, *self.extra]
            self.command = command
            self.process = self._popen()
            self._drainer = threading.Thread(target=self._drain, daemon=True)
            self._drainer.start()
            if self._wait_ready(timeout):
                return
            if self.process.poll() is None:
                self.stop()
                raise RuntimeError("the server did not become ready:\n" + "".join(self.log))
            if self._drainer is not None:
                self._drainer.join(5)
            if "in use" not in "".join(self.log):
                break  # not a port taken meanwhile: trying again would fail the same way
        raise RuntimeError("the server exited during startup:\n" + "".join(self.log))

    def _popen(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=child_environment(self.src),
        )

    def _drain(self) -> None:
        # Keep reading stderr so that the server never blocks on a full pipe (at info level it logs a
        # line per webhook); remember the last lines for error reports.
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.log_lines += 1

    def _wait_ready(self, timeout: float) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.host}:{self.http_port}/readyz", timeout=1).status_code == 200:
                    return True
            time.sleep(0.05)
        return False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, wait for the clean shutdown, SIGKILL if it takes longer than ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait(10)
            self.log.append(f"[bench] server did not stop within {timeout} s of SIGTERM: killed\n")
        self.stop_s = round(time.perf_counter() - started, 3)
        if self._drainer is not None:
            self._drainer.join(5)


class ClientUnderTest(ServerUnderTest):
    """``python -m gitstafette client`` started by the bench (``command``, with ``src`` as the server's); stderr
    drained and stopped as the server is."""

    def __init__(self, command: list[str], src: Path | None = None) -> None:
        super().__init__(store="", log_level="", extra=[], src=src)
        self.command = command
        self.health_port: int | None = None

    def start(self, timeout: float = 30) -> None:
        self.process = self._popen()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        self.health_port = self._find_health_port(timeout)

    def _find_health_port(self, timeout: float) -> int | None:
        """The health port it picked: from its log (info level), else from its listening sockets."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("the client exited during startup:\n" + "".join(self.log))
            for line in list(self.log):
                if found := re.search(r"listening: health=\S+:(\d+)", line):
                    return int(found.group(1))
            ports = listening_ports(self.process.pid)
            if ports:
                return ports[0]
            time.sleep(0.05)
        return None

    def wait_connected(self, timeout: float = 30) -> bool:
        """Its /ready answers 200: subscribed on a stream to the server."""
        import httpx

        if not self.health_port:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("the client exited:\n" + "".join(self.log))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.health_port}/ready", timeout=1).status_code == 200:
                    return True
            time.sleep(0.05)
        return False


def listening_ports(pid: int) -> list[int]:
    """TCP ports process ``pid`` listens on (Linux /proc), in no particular order."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports: list[int] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def client_counters(health_port: int | None) -> dict[str, float]:
    """The client's settled / attempts / received counters, from its /metrics."""
    import httpx

    if not health_port:
        return {}
    try:
        text = httpx.get(f"http://127.0.0.1:{health_port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    wanted = r"gitstafette_client_(?:events_settled|delivery_attempts|events_received|connections|connection_failures)"
    found = re.findall(rf"^({wanted}_total(?:\{{[^}}]*\}})?) (\S+)$", text, re.MULTILINE)
    return {name.replace("gitstafette_client_", ""): float(value) for name, value in found}


def server_counters(base_url: str) -> dict[str, float]:
    """``gitstafette_webhooks_received_total`` by outcome, from /metrics."""
    import httpx

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    counts: dict[str, float] = {}
    for labels, value in re.findall(r"^gitstafette_webhooks_received_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        outcome = re.search(r'outcome="([^"]+)"', labels)
        if outcome:  # summed over the other labels (repository, event)
            counts[outcome.group(1)] = counts.get(outcome.group(1), 0.0) + float(value)
    return counts
