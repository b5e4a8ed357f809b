"""A stock client of the original contract, generated from tests/proto/original_gitstafette.proto, works."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.utils import ROOT, ServerProcess, fixture_files, github_request

PROTO_DIR = ROOT / "tests" / "proto"


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stock")
    code = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", "original_gitstafette.proto"]
    )
    assert code == 0
    return out


def stock(stock_dir: Path, server: ServerProcess, *args: str) -> list[dict]:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, str(PROTO_DIR / "stock_client.py"), str(stock_dir), server.grpc_target, *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def repository_fixtures() -> list[tuple[dict[str, str], bytes, str]]:
    requests = [github_request(path) for path in fixture_files()]
    return [r for r in requests if r[2] == "186853002"]


def test_fetch_streams_every_event_byte_for_byte(server: ServerProcess, stock_dir: Path) -> None:
    requests = repository_fixtures()
    assert len(requests) >= 4
    before, after = requests[:2], requests[2:]
    for headers, body, _ in before:
        assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 201

    # Events stored before the stream opened and events posted while it is open both arrive.
    process = subprocess.Popen(
        [
            sys.executable,
            str(PROTO_DIR / "stock_client.py"),
            str(stock_dir),
            server.grpc_target,
            "fetch",
            "stock-1",
            "186853002",
            str(len(requests)),
            "0",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [json.loads(process.stdout.readline())]  # the stream is open once the first event arrived
        for headers, body, _ in after:
            assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 201
        out = process.stdout.read()  # the client's own call timeout bounds this
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.stderr is not None
    err = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert process.returncode == 0, err
    lines += [json.loads(line) for line in out.splitlines()]
    events = [line["event"] for line in lines if "event" in line]
    assert [e["event_id"] for e in events] == [h["X-GitHub-Delivery"] for h, _, _ in requests]
    for event, (headers, body, _) in zip(events, requests, strict=True):
        assert base64.b64decode(event["body"]) == body
        assert dict(event["headers"]) == headers


def test_resume_after_sequence_and_duration(server: ServerProcess, stock_dir: Path) -> None:
    requests = repository_fixtures()[:3]
    for headers, body, _ in requests:
        assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 201
    # last_received_event_id 2 resumes after sequence 2; duration_secs 1 ends the stream by itself.
    started = time.monotonic()
    lines = stock(stock_dir, server, "fetch", "stock-2", "186853002", "99", "2", "1")
    events = [line["event"]["event_id"] for line in lines if "event" in line]
    assert events == [requests[2][0]["X-GitHub-Delivery"]]
    assert lines[-1] == {"done": 1}
    assert time.monotonic() - started < 60  # the stream ended on its own, not by the call's timeout


def test_push_and_statuses_count_from_the_store(server: ServerProcess, stock_dir: Path) -> None:
    assert stock(stock_dir, server, "push", "42", "pushed-1", '{"zen": "a"}') == [
        {"response_code": "201", "accepted": True}
    ]
    assert stock(stock_dir, server, "push", "42", "pushed-1", '{"zen": "a"}') == [
        {"response_code": "204", "accepted": True}
    ]
    # A client that fetched (counted delivered once sent) has nothing pending, until the next push.
    assert stock(stock_dir, server, "status", "fresh", "42")[0]["count"] == 1
    stock(stock_dir, server, "fetch", "reader", "42", "1", "0", "0")
    assert stock(stock_dir, server, "status", "reader", "42")[0]["count"] == 0
    assert stock(stock_dir, server, "push", "42", "pushed-2", '{"zen": "b"}')[0]["accepted"]
    listed = httpx.get(f"{server.url}/v1/events/42").json()["events"]
    assert [e["delivery_id"] for e in listed] == ["pushed-1", "pushed-2"]
    assert stock(stock_dir, server, "status", "reader", "42")[0]["count"] == 1
    assert stock(stock_dir, server, "status", "fresh", "42")[0]["count"] == 2
    statuses = stock(stock_dir, server, "statuses", "reader")
    assert {"count": 1, "repository_id": "42", "status": "OK"} in statuses
