"""Metrics after a real relay: server and client /metrics parsed with prometheus-client's text parser."""

from __future__ import annotations

import json
import re

import httpx
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from gitstafette.telemetry.labels import OVERFLOW_LABEL, LabelChildren
from tests.client.utils import RecordingTarget, post_many, post_webhook, repository_of, running_client, wait_until
from tests.observability.utils import json_lines
from tests.utils import FIXTURES, ROOT, ServerProcess, github_request, metric_sum

RELAYED = 12
DASHBOARD = ROOT / "deploy" / "grafana" / "gitstafette.json"


def exposed_names(url: str) -> set[str]:
    """Every series name /metrics declares, with the suffixes Prometheus gives counters and histograms."""
    names = set()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_counters_equal_the_webhooks_relayed(server: ServerProcess, target: RecordingTarget) -> None:
    repository = repository_of()
    labels = {"repository": repository, "client_id": "metrics-client"}
    with running_client(server, [repository], target.url, "metrics-client") as client, httpx.Client() as http:
        client.wait_connected()
        post_many(http, server, RELAYED)
        headers, body, _ = github_request(FIXTURES / "push.0.json")
        headers["X-GitHub-Hook-Installation-Target-ID"] = "999"
        headers["X-GitHub-Delivery"] = "unwatched-is-counted-too"
        http.post(f"{server.url}/v1/github/", headers={**headers, "X-Hub-Signature-256": "x"}, content=b"")
        wait_until(lambda: metric_sum(server.url, "gitstafette_events_acknowledged_total", **labels) >= RELAYED)

        received = "gitstafette_webhooks_received_total"
        assert metric_sum(server.url, received, repository=repository, event="push", outcome="stored") == RELAYED
        assert metric_sum(server.url, received, repository="999", event="push", outcome="rejected-invalid") == 1
        assert metric_sum(server.url, received) == RELAYED + 1
        assert metric_sum(server.url, "gitstafette_events_streamed_total", **labels) == RELAYED
        assert metric_sum(server.url, "gitstafette_events_acknowledged_total", **labels) == RELAYED
        assert metric_sum(server.url, "gitstafette_dead_letters_total") == 0
        assert metric_sum(server.url, "gitstafette_streams_connected") == 1
        assert metric_sum(server.url, "gitstafette_backlog_events", **labels) == 0
        appends = metric_sum(server.url, "gitstafette_store_operation_seconds_count", operation="append")
        assert appends == RELAYED

        delivered = {"repository": repository, "outcome": "delivered", "status": "200"}
        assert client.metric("gitstafette_client_deliveries_total", **delivered) == RELAYED
        assert client.metric("gitstafette_client_deliveries_total") == RELAYED
        assert client.metric("gitstafette_client_events_received_total", repository=repository) == RELAYED
        assert client.metric("gitstafette_client_delivery_lag_seconds_count") == RELAYED
        assert client.metric("gitstafette_client_delivery_retries_total") == 0

        exposed = exposed_names(server.url) | exposed_names(client.url)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"gitstafette_\w+", target["expr"])
    }
    assert len(queried) >= 15
    assert queried <= exposed, f"the dashboard queries series nobody exposes: {sorted(queried - exposed)}"

    # stderr is not a terminal: every line is a JSON object; lines about a webhook carry its delivery id
    for process in (server, client):
        lines = json_lines(process.lines)
        assert {"event", "level", "logger", "timestamp"} <= set(lines[0])
        about = [line for line in lines if "stored as #" in line["event"] or line["event"].startswith("delivered ")]
        assert len(about) == RELAYED
        assert all(line["delivery_id"] in line["event"] and "trace_id" not in line for line in about)


def test_backlog_rises_while_the_target_is_down_and_drains_after(
    server: ServerProcess, target: RecordingTarget
) -> None:
    repository = repository_of()
    labels = {"repository": repository, "client_id": "backlog-client"}
    target.stop()  # connections refused until it starts again on the same port
    with running_client(server, [repository], target.url, "backlog-client") as client, httpx.Client() as http:
        client.wait_connected()
        for _ in range(5):
            post_webhook(http, server)
        wait_until(lambda: metric_sum(server.url, "gitstafette_backlog_events", **labels) == 5, message="backlog 5")
        wait_until(lambda: client.metric("gitstafette_client_delivery_retries_total", repository=repository) >= 2)
        assert metric_sum(server.url, "gitstafette_backlog_oldest_age_seconds", **labels) > 0

        target.start()
        wait_until(lambda: metric_sum(server.url, "gitstafette_backlog_events", **labels) == 0, message="drained")
        assert metric_sum(server.url, "gitstafette_backlog_oldest_age_seconds", **labels) == 0
        assert metric_sum(server.url, "gitstafette_events_acknowledged_total", **labels) == 5
        assert client.metric("gitstafette_client_deliveries_total", outcome="delivered", status="200") == 5


def test_a_dead_letter_counts_on_both_sides(server: ServerProcess, target: RecordingTarget) -> None:
    repository = repository_of()
    target.answer = lambda request: 422
    with running_client(server, [repository], target.url, "dead-client") as client, httpx.Client() as http:
        client.wait_connected()
        post_webhook(http, server)
        wait_until(lambda: metric_sum(server.url, "gitstafette_dead_letters_total", client_id="dead-client") == 1)
        assert client.metric("gitstafette_client_deliveries_total", outcome="dead-letter", status="422") == 1
        assert client.metric("gitstafette_client_dead_letters_total", repository=repository) == 1
        assert metric_sum(server.url, "gitstafette_backlog_events", client_id="dead-client") == 0


def test_label_values_from_outside_are_bounded() -> None:
    registry = CollectorRegistry()
    counter = Counter("made_up", "a test counter", ["repository", "event", "outcome"], registry=registry)
    children = LabelChildren(counter, limit=3)
    for number in range(10):
        children(str(number), "push", "stored").inc()
    children("0", "push", "stored").inc()  # a known label set keeps its own child
    children("10", "push", "rejected-signature").inc()

    def value(*labels: str) -> float | None:
        return registry.get_sample_value(
            "made_up_total", dict(zip(["repository", "event", "outcome"], labels, strict=True))
        )

    assert value("0", "push", "stored") == 2
    assert value("2", "push", "stored") == 1
    assert value("3", "push", "stored") is None
    assert value(OVERFLOW_LABEL, OVERFLOW_LABEL, "stored") == 7
    assert value(OVERFLOW_LABEL, OVERFLOW_LABEL, "rejected-signature") == 1
