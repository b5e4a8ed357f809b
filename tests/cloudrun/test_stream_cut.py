"""Long-lived streams through the Cloud Run ingress: the proxy cuts a stream that is silent for its timeout
(made short here); the server's heartbeats below it keep a stream open, and a stream cut anyway (no
heartbeat in time, or Cloud Run's request timeout) is resumed by the client from its cursor, so that the
target receives every event once, in order per repository."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.client.utils import PUSH, ClientProcess, RecordingTarget, duplicates, running_client, wait_until
from tests.cloudrun.ingress import Ingress, haproxy_or_skip, one_port
from tests.utils import github_request, running_server

#: the proxy's idle timeout in these tests: a stream silent this long is cut
PROXY_TIMEOUT = "1s"
REPOSITORIES = ("186853002", "537845873")


@pytest.fixture
def store(tmp_path: Path) -> str:
    haproxy_or_skip()
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    with RecordingTarget() as recording:
        yield recording


def _post(http: httpx.Client, ingress: Ingress, repository_id: str) -> tuple[str, str]:
    headers, body, _ = github_request(PUSH)
    headers["X-GitHub-Hook-Installation-Target-ID"] = repository_id
    response = http.post(f"{ingress.url}/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    return repository_id, headers["X-GitHub-Delivery"]


def _connections(client: ClientProcess) -> float:
    """Streams the client opened and had subscribed: one more after each cut."""
    return client.metric("gitstafette_client_connections_total")


def _assert_delivered_once_in_order(target: RecordingTarget, posted: list[tuple[str, str]]) -> None:
    expected = [delivery for _, delivery in posted]
    wait_until(lambda: len(set(target.delivered_ids())) >= len(expected), 60, "every event delivered")
    delivered = target.delivered_ids()
    assert duplicates(delivered) == {}, "an event reached the target twice"
    assert sorted(delivered) == sorted(expected)
    for repository in REPOSITORIES:
        of_repository = [d for r, d in posted if r == repository]
        assert [d for d in delivered if d in set(of_repository)] == of_repository, f"{repository} out of order"


def _bursts(http: httpx.Client, ingress: Ingress, bursts: int, pause_s: float) -> list[tuple[str, str]]:
    """``bursts`` of 8 webhooks over both repositories, ``pause_s`` of silence between two bursts."""
    posted: list[tuple[str, str]] = []
    silence = threading.Event()
    for burst in range(bursts):
        if burst:
            silence.wait(pause_s)
        posted += [_post(http, ingress, REPOSITORIES[index % 2]) for index in range(8)]
    return posted


Relay = tuple[Ingress, ClientProcess, httpx.Client]


@contextmanager
def _relay(store: str, target: RecordingTarget, heartbeat: str) -> Iterator[Relay]:
    """Server (``--heartbeat``), the ingress with the short timeout in front, and a connected client behind it."""
    with (
        running_server("--store", store, "--heartbeat", heartbeat) as server,
        one_port(server, PROXY_TIMEOUT) as ingress,
        running_client([ingress.grpc_target], list(REPOSITORIES), target.url, "behind-the-proxy") as client,
        httpx.Client(timeout=10) as http,
    ):
        client.wait_connected()
        yield ingress, client, http


def test_streams_cut_at_the_proxy_timeout_lose_and_repeat_nothing(store: str, target: RecordingTarget) -> None:
    # Heartbeats far apart: the proxy cuts the stream each time events pause for longer than its timeout,
    # and the next burst arrives while the client is reconnecting, or just after.
    with _relay(store, target, "60s") as (ingress, client, http):
        posted = _bursts(http, ingress, bursts=6, pause_s=1.4)
        _assert_delivered_once_in_order(target, posted)
        assert _connections(client) >= 3, "the proxy did not cut the stream: the test proved nothing"
        assert "disconnected from" in client.log()


def test_heartbeats_below_the_proxy_timeout_keep_the_stream_open(store: str, target: RecordingTarget) -> None:
    with _relay(store, target, "0.3s") as (ingress, client, http):
        # silences of three proxy timeouts each, which the heartbeats fill
        posted = _bursts(http, ingress, bursts=3, pause_s=3.0)
        _assert_delivered_once_in_order(target, posted)
        assert _connections(client) == 1, client.log()
