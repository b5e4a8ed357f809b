"""Redis for the tests: the machine's Redis (127.0.0.1:6379, or GITSTAFETTE_TEST_REDIS), on database numbers
of the tests' own, and test-owned ``redis-server`` processes for stopping and starting.

Each test gets a key prefix of its own and deletes its keys before and after: several test runs (several
engineers, or CI) can share the Redis without flushing each other's data. With GITSTAFETTE_REQUIRE_REDIS=1
(CI) a Redis that cannot be reached fails the tests that need it; otherwise they are skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: the Redis the tests use, without a database number
REDIS_BASE_URL = os.environ.get("GITSTAFETTE_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")
#: database numbers of the tests (never 0): the shared store suite, the Redis-specific tests, real servers,
#: replicas serving one client id (leases and the drills)
SUITE_DB = 11
REDIS_TESTS_DB = 12
SERVER_TESTS_DB = 13
REPLICAS_TESTS_DB = 14


def unique_prefix() -> str:
    return f"gst-test-{uuid.uuid4().hex[:12]}"


def redis_url(database: int, prefix: str | None = None) -> str:
    return f"{REDIS_BASE_URL}/{database}?prefix={prefix or unique_prefix()}"


def require_redis(url: str = REDIS_BASE_URL) -> None:
    """Fail (GITSTAFETTE_REQUIRE_REDIS=1) or skip the test when the Redis at ``url`` does not answer."""
    try:
        base = url.partition("?")[0]
        with redis.Redis.from_url(
            base, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        ) as client:
            client.ping()
    except redis.RedisError as exc:
        reason = f"Redis at {url.partition('?')[0]} is not reachable ({exc})"
        if os.environ.get("GITSTAFETTE_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}, and GITSTAFETTE_REQUIRE_REDIS=1 says the tests must run against it")
        pytest.skip(f"{reason}; start redis-server (or set GITSTAFETTE_TEST_REDIS) to run the Redis tests")


def delete_prefix(url: str) -> None:
    """Delete every key of the store ``url`` names (its database and ?prefix=)."""
    base, _, query = url.partition("?")
    prefix = parse_qs(query).get("prefix", [""])[-1]
    assert prefix.startswith("gst-test-"), f"refusing to delete keys of {url}"
    with redis.Redis.from_url(base, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])


@contextmanager
def redis_store_url(database: int, options: str = "") -> Iterator[str]:
    """A store URL on the machine's Redis, in ``database``, with a key prefix of its own and ``options``
    (``"&lease_ttl=2s"``); fails or skips the test when Redis is missing; its keys are deleted before and after."""
    url = redis_url(database) + options
    require_redis(url)
    delete_prefix(url)
    try:
        yield url
    finally:
        delete_prefix(url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, that the test may stop and start again."""

    def __init__(self, folder: Path, *, appendonly: bool = False, extra_args: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("GITSTAFETTE_REQUIRE_REDIS") == "1":
                pytest.fail("redis-server is not installed, and GITSTAFETTE_REQUIRE_REDIS=1 needs it")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.folder),
            *self.extra_args,
        ]

    def start(self, timeout: float = 10) -> RedisServer:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # No retries of its own (redis-py's default backs off for seconds): this loop retries.
                with redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)) as client:
                    client.ping()
                return self
            except redis.AuthenticationError:  # started, with a password
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class SentinelServer(RedisServer):
    """A ``redis-server --sentinel`` of the test's own that watches the master ``master_port`` as ``service``,
    calling it down after ``down_after_ms`` without an answer (one sentinel is enough for a quorum of 1)."""

    def __init__(self, folder: Path, master_port: int, service: str = "mymaster", down_after_ms: int = 1000) -> None:
        super().__init__(folder)
        self.service = service
        self.config = folder / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 2000\n"
        )

    def command(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel"]
