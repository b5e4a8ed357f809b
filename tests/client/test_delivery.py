"""Delivery to the target, end to end: a real server, the client as a process, a recording target."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.client.utils import (
    ClientProcess,
    RecordingTarget,
    duplicates,
    post_many,
    post_webhook,
    repository_of,
    running_client,
    wait_until,
)
from tests.utils import ServerProcess, fixture_files, github_request, running_server

#: Headers the HTTP client itself must add to a POST: nothing else beyond the event's own.
FRAMING_HEADERS = {"host", "content-length"}


def _events_of(server: ServerProcess, repository_id: str) -> list[dict[str, object]]:
    response = httpx.get(f"{server.url}/v1/events/{repository_id}", timeout=5)
    response.raise_for_status()
    events: list[dict[str, object]] = response.json()["events"]
    return events


def test_every_fixture_arrives_byte_identical_with_githubs_headers_in_order(
    server: ServerProcess, target: RecordingTarget
) -> None:
    requests = [github_request(path) for path in fixture_files()]
    requests = [(headers, body, repository) for headers, body, repository in requests if repository]
    assert len(requests) >= 5
    repositories = sorted({repository for _, _, repository in requests})
    with running_client(server, repositories, target.url) as client, httpx.Client() as http:
        client.wait_connected()
        for headers, body, _ in requests:
            response = http.post(f"{server.url}/v1/github/", headers=headers, content=body)
            assert response.status_code == 201, response.text
        wait_until(lambda: len(target.delivered()) >= len(requests), message="every fixture at the target")
        assert client.metric("gitstafette_client_events_settled_total", outcome="delivered") == len(requests)

    received = {r.delivery_id: r for r in target.delivered()}
    assert len(received) == len(target.delivered()) == len(requests)
    for headers, body, _ in requests:
        got = received[headers["X-GitHub-Delivery"]]
        assert got.body == body
        assert got.path == "/hook"
        got_headers = {name.lower(): value for name, value in got.headers}
        assert {name.lower(): value for name, value in headers.items()} == {
            name: value for name, value in got_headers.items() if name not in FRAMING_HEADERS
        }
        assert got_headers["content-length"] == str(len(body))
    for repository in repositories:
        sent_order = [h["X-GitHub-Delivery"] for h, _, r in requests if r == repository]
        got_order = [
            r.delivery_id for r in target.delivered() if r.header("X-GitHub-Hook-Installation-Target-ID") == repository
        ]
        assert got_order == sent_order


def test_target_refusing_then_failing_gets_every_event_in_order_when_back(
    server: ServerProcess, target: RecordingTarget
) -> None:
    repository = repository_of()
    target.stop()  # connections refused from now on, on a port the target will come back to
    with running_client(server, [repository], target.url) as client, httpx.Client() as http:
        sent = post_many(http, server, 50)
        wait_until(
            lambda: client.metric("gitstafette_client_delivery_attempts_total", result="connect-error") >= 2,
            message="refused delivery attempts",
        )
        target.answer = lambda request: 503
        target.start()
        wait_until(lambda: len(target.posts()) >= 3, message="attempts answered 503")
        assert target.delivered() == []
        target.answer = lambda request: 200
        wait_until(lambda: len(target.delivered()) >= 50, timeout=30, message="all 50 delivered")
        assert client.metric("gitstafette_client_delivery_attempts_total", result="5xx") >= 3

    assert target.delivered_ids() == sent
    # Only the oldest event was ever retried: the others waited their turn.
    assert {r.delivery_id for r in target.posts() if r.status != 200} == {sent[0]}


def test_a_4xx_dead_letters_the_event_and_the_next_one_is_still_delivered(
    server: ServerProcess, target: RecordingTarget
) -> None:
    repository = repository_of()
    with httpx.Client() as http:
        sent = [post_webhook(http, server) for _ in range(3)]
        target.answer = lambda request: 422 if request.delivery_id == sent[1] else 200
        with running_client(server, [repository], target.url, "dead-letter-client"):
            wait_until(lambda: len(target.delivered()) >= 2, message="the two good events")

            def states() -> list[object] | None:
                events = _events_of(server, repository)
                clients = [e["clients"].get("dead-letter-client", {}) for e in events]  # type: ignore[attr-defined]
                found = [c.get("state") for c in clients]
                return found if "pending" not in found and None not in found else None

            listed = wait_until(states, message="the server to record the outcomes")

    assert target.delivered_ids() == [sent[0], sent[2]]
    assert [r.delivery_id for r in target.posts()].count(sent[1]) == 1  # a 4xx is not retried
    assert listed == ["acknowledged", "dead-letter", "acknowledged"]
    letter = _events_of(server, repository)[1]["clients"]["dead-letter-client"]  # type: ignore[index]
    assert letter["status_code"] == 422 and "422" in letter["reason"]


def test_delivery_pauses_while_the_target_health_url_fails(server: ServerProcess, target: RecordingTarget) -> None:
    repository = repository_of()
    target.health_status = 503
    with (
        running_client(
            server, [repository], target.url, "health-client", "--target-health-url", target.health_url
        ) as client,
        httpx.Client() as http,
    ):
        sent = [post_webhook(http, server) for _ in range(3)]
        wait_until(
            lambda: client.metric("gitstafette_client_target_health_checks_total", result="fail") >= 2,
            message="failing health checks",
        )
        assert target.posts() == []  # nothing is attempted while unhealthy
        assert client.metric("gitstafette_client_target_healthy") == 0
        assert client.health()["target_healthy"] is False
        target.health_status = 200
        wait_until(lambda: len(target.delivered()) >= 3, message="delivery to resume")
        assert client.metric("gitstafette_client_target_healthy") == 1

    assert target.delivered_ids() == sent
    logged = client.log()
    assert logged.count("delivery paused") == 1 and logged.count("delivery resumes") == 1


def test_a_grpc_target_is_another_gitstafette_server(tmp_path: Path) -> None:
    repository = repository_of()
    with (
        running_server("--store", f"sqlite:///{tmp_path / 'a.db'}") as first,
        running_server("--store", "memory://") as second,
        running_client(first, [repository], f"grpc://{second.grpc_target}", "chain") as client,
        httpx.Client() as http,
    ):
        sent = [post_webhook(http, first) for _ in range(4)]

        def relayed() -> list[str]:
            response = http.get(f"{second.url}/v1/events/{repository}")
            return [e["delivery_id"] for e in response.json()["events"]] if response.status_code == 200 else []

        assert wait_until(lambda: len(relayed()) >= 4 and relayed(), message="events on the second server") == sent
        assert client.metric("gitstafette_client_events_settled_total", outcome="delivered") == 4


def test_shutdown_on_sigterm_is_clean_and_the_next_client_does_not_redeliver(
    server: ServerProcess, target: RecordingTarget
) -> None:
    repository = repository_of()
    with httpx.Client() as http:
        sent = [post_webhook(http, server) for _ in range(5)]
        client = ClientProcess([server.grpc_target], [repository], target.url, "sigterm-client").start()
        try:
            wait_until(lambda: len(target.delivered()) >= 5, message="the first five")
        finally:
            assert client.stop() == 0
        assert "gitstafette client stopped" in client.log()
        sent += [post_webhook(http, server) for _ in range(2)]
        with running_client(server, [repository], target.url, "sigterm-client"):
            wait_until(lambda: len(target.delivered()) >= 7, message="the two new ones")
    assert target.delivered_ids() == sent
    assert duplicates(target.delivered_ids()) == {}
