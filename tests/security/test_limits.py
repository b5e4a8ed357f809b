"""Slow and greedy HTTP clients cannot hold the server: request deadlines and a header size limit."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.security.utils import post_signed
from tests.utils import ServerProcess, metric_sum, running_server

REQUEST_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(
        "--store", "memory://", "--request-timeout", f"{REQUEST_TIMEOUT_S:g}s", "--max-header-size", "8KiB"
    ) as process:
        yield process


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_a_client_sending_one_byte_a_second_is_cut_off_while_others_are_served(server: ServerProcess) -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    slow = connect(server)
    slow.sendall(
        b"POST /v1/github/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-GitHub-Event: push\r\nX-GitHub-Delivery: slow-1\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    trickling = threading.Event()

    def trickle() -> None:
        for byte in body:
            try:
                slow.send(bytes([byte]))
            except OSError:
                return  # the server cut us off
            trickling.set()
            time.sleep(1)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    trickling.wait(5)

    # Meanwhile, other senders are served at once, again and again.
    for _ in range(3):
        began = time.monotonic()
        response, _ = post_signed(server, None)
        assert response.status_code == 201
        assert time.monotonic() - began < 1.0
        time.sleep(0.2)

    answer = read_all(slow)
    took = time.monotonic() - started
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive within 2s" in answer
    assert REQUEST_TIMEOUT_S - 0.5 < took < REQUEST_TIMEOUT_S + 3, took
    assert metric_sum(server.url, "gitstafette_webhooks_received_total", outcome="timeout") == 1


def test_headers_trickling_in_are_cut_off_too(server: ServerProcess) -> None:
    slow = connect(server)
    started = time.monotonic()
    slow.sendall(b"POST /v1/github/ HTTP/1.1\r\nHost: test\r\n")
    try:
        for byte in b"X-GitHub-Event: push\r\nX-GitHub-Delivery: slow-headers\r\n":
            slow.send(bytes([byte]))
            time.sleep(0.5)
    except OSError:
        pass
    answer = read_all(slow)
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + 3


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    idle = connect(server)
    started = time.monotonic()
    assert read_all(idle) == b""
    idle.close()
    assert REQUEST_TIMEOUT_S - 0.5 < time.monotonic() - started < REQUEST_TIMEOUT_S + 3


def test_headers_over_the_limit_get_431(server: ServerProcess) -> None:
    sock = connect(server)
    sock.sendall(
        b"POST /v1/github/ HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"x" * 10_000 + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    # Headers within the limit, and keep-alive connections, work as before.
    with httpx.Client(base_url=server.url) as http:
        for _ in range(2):
            assert http.get("/healthz", headers={"X-Padding": "x" * 4000}).status_code == 200
