"""Fuzzing ``POST /v1/github/`` of a real server process with hypothesis: random methods, headers, content
types, encodings, bodies (broken or deeply nested JSON, forms, random bytes, sizes around the limit), sent
as raw HTTP/1.1 with a Content-Length or chunked. The server never answers 5xx and stays up, it answers 201 only
for a GitHub payload (a JSON object, as JSON or as a form's ``payload``) and 415 only for a content type GitHub
does not send, and what it stored afterwards is exactly what it answered 201 for, byte for byte.

Examples per server: the ``ci`` profile (tests/conftest.py); ``GITSTAFETTE_FUZZ_EXAMPLES=N`` for long runs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.github.strategies import (
    HELLO_WORLD_ID,
    OCTOCODERS_ID,
    WebhookRequest,
    bodies,
    expected_payload,
    one_in,
    webhook_requests,
)
from tests.security.utils import sign
from tests.server.test_http_ingest import SOCKET_TIMEOUT_S, connect, read_response
from tests.utils import ServerProcess, running_server

MAX_BODY = 64 * 1024
SECRET_BY_ID = "fuzz-secret-by-id-7f3a9c"
SECRET_BY_NAME = "fuzz-secret-by-name-51be0d"
METHODS = ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "post", "FOO", "M-SEARCH")
PATHS = ("/v1/github/", "/v1/github", "/v1/github//", "/v1/github/?x=1", "/v1/GITHUB/")


@dataclass
class FuzzServer:
    process: ServerProcess
    database: Path
    #: whether webhook secrets apply (then some requests are signed with them)
    signed: bool


@pytest.fixture(scope="module", params=["every-repository", "watchlist-and-secrets"])
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """A server taking bodies up to 64 KiB: watching every repository unsigned, or a watchlist (ids and a
    name) with a secret for one repository id and one for an owner/name."""
    folder = tmp_path_factory.mktemp("fuzz")
    database = folder / "events.db"
    args = ["--store", f"sqlite:///{database}", "--max-body-size", "64KiB"]
    signed = request.param == "watchlist-and-secrets"
    if signed:
        secrets = folder / "webhook-secrets.yaml"
        secrets.write_text(f'"{OCTOCODERS_ID}": {SECRET_BY_ID}\nCodertocat/Hello-World: {SECRET_BY_NAME}\n')
        args += ["--repositories", f"{HELLO_WORLD_ID},{OCTOCODERS_ID},octo-org/deploy"]
        args += ["--webhook-secrets-file", str(secrets)]
    else:
        args += ["--repositories", "*"]
    with running_server(*args) as process:
        yield FuzzServer(process, database, signed)


@dataclass
class RawRequest:
    method: str
    path: str
    webhook: WebhookRequest
    chunk_size: int  # 0: Content-Length

    def encode(self, port: int) -> bytes:
        """The request as bytes: header values in latin-1, or UTF-8 when they hold more (an odd encoding
        some senders use)."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.webhook.headers]
        body = self.webhook.body
        if not self.chunk_size:
            lines.append(f"Content-Length: {len(body)}")
            return _head(lines) + body
        lines.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + self.chunk_size] for i in range(0, len(body), self.chunk_size)]
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        return _head(lines) + chunks + b"0\r\n\r\n"


def _head(lines: list[str]) -> bytes:
    text = "\r\n".join(lines) + "\r\n\r\n"
    return text.encode("latin-1") if max(map(ord, text)) < 256 else text.encode("utf-8")


def _near_the_limit(size: int) -> bytes:
    return b'{"repository": {"id": 186853002}}'.ljust(size)


@st.composite
def raw_requests(draw: st.DrawFn, signed: bool) -> RawRequest:
    webhook = draw(webhook_requests())
    if one_in(draw, 10):
        webhook.body = draw(st.integers(MAX_BODY - 8, MAX_BODY + 8).map(_near_the_limit) | bodies())
    if signed and not one_in(draw, 4):  # signed with the secret that applies to where the header routes it
        routed = webhook.by_name().get("x-github-hook-installation-target-id", "").strip()
        secret = SECRET_BY_ID if routed == OCTOCODERS_ID else SECRET_BY_NAME
        webhook.headers.append(("X-Hub-Signature-256", sign(secret, webhook.body)))
    method = draw(st.sampled_from(METHODS)) if one_in(draw, 5) else "POST"
    path = draw(st.sampled_from(PATHS)) if one_in(draw, 5) else "/v1/github/"
    chunk_size = draw(st.just(0) | st.integers(1, 8192))
    return RawRequest(method, path, webhook, chunk_size)


def send(server: ServerProcess, request: RawRequest) -> tuple[int, bytes]:
    with connect(server) as sock:
        try:
            sock.sendall(request.encode(server.http_port))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole request was sent (413, 400): the answer is still there to read
        status, _, body = read_response(sock)
    return status, body


def stored_events(database: Path) -> dict[tuple[str, str, int], bytes]:
    """(repository id, delivery id, sequence) → sha256 of the body, of every event in the server's file."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=SOCKET_TIMEOUT_S) as db:
        rows = db.execute("SELECT repository_id, delivery_id, sequence, body FROM events").fetchall()
    return {(r, d, s): hashlib.sha256(b).digest() for r, d, s, b in rows}


def test_the_webhook_endpoint_never_answers_5xx_and_stores_only_what_it_answered_201(fuzz_server: FuzzServer) -> None:
    server = fuzz_server.process
    accepted: dict[tuple[str, str, int], bytes] = {}
    statuses: dict[int, int] = {}

    @given(raw_requests(fuzz_server.signed))
    def one_request(request: RawRequest) -> None:
        status, answer = send(server, request)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, answer, request)
        assert server.alive(), server.log()
        payload = expected_payload(request.webhook.body, request.webhook.by_name().get("content-type"))
        if status == 415:
            assert payload == 415, (answer, request)
        if status == 201:
            assert request.method == "POST"
            assert isinstance(payload, dict), (answer, request)
            stored = json.loads(answer)
            key = (stored["repository_id"], stored["delivery_id"], stored["sequence"])
            assert key not in accepted, f"201 twice for {key}"
            accepted[key] = hashlib.sha256(request.webhook.body).digest()

    one_request()

    assert accepted, f"no request was accepted: the fuzzing missed the path that stores ({statuses})"
    assert stored_events(fuzz_server.database) == accepted, statuses
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT_S) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
    assert "Traceback" not in server.log(), server.log()
