"""Traces and OTLP metrics, exported by the real server and client to an OTLP/HTTP collector stand-in."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from gitstafette.config import OtelSettings
from gitstafette.exceptions import ConfigError
from gitstafette.telemetry.process import Telemetry
from gitstafette.telemetry.tracing import Tracing
from tests.client.utils import RecordingTarget, post_webhook, repository_of, running_client, wait_until
from tests.grpc_clients import AckStream
from tests.observability.utils import ExportedSpan, exported_spans, exported_sums, json_lines
from tests.utils import running_server

#: spans leave in batches every 100 ms, metrics every 200 ms: the test waits for them, never for a time
#: (service, span) that one trace over a chain of two relays holds
PUSH = "/gitstafette.v1.Gitstafette/WebhookEventPush"
CHAIN_SPANS = {("gitstafette-client", "deliver"), ("gitstafette-client", PUSH), ("b", PUSH), ("b", "ingest")}
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "200"}
SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER = 2, 3, 4


def _by_name(spans: list[ExportedSpan], delivery_id: str) -> dict[str, ExportedSpan]:
    """The spans of one delivery (and their HTTP server span), by name."""
    ours = {s.name: s for s in spans if s.attributes.get("gitstafette.delivery_id") == delivery_id}
    if "ingest" in ours:
        ours.update({s.name: s for s in spans if s.span_id == ours["ingest"].parent_span_id})
    if "store append" not in ours and "ingest" in ours:
        ours.update({s.name: s for s in spans if s.parent_span_id == ours["ingest"].span_id})
    return ours


def test_one_webhook_is_one_trace_from_the_http_post_to_the_target(tmp_path: Path, target: RecordingTarget) -> None:
    repository = repository_of()
    with RecordingTarget() as collector:
        # The server gets the standard variables, the client the original's: each must reach the collector.
        # The server's OTEL_HOSTNAME/OTEL_PORT point nowhere: the standard endpoint wins over them.
        server_env = {
            **FAST_EXPORT,
            "OTEL_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_HOSTNAME": "127.0.0.1",
            "OTEL_PORT": "9",
        }
        client_env = {
            **FAST_EXPORT,
            "OTEL_ENABLED": "true",
            "OTEL_PROTOCOL": "http",
            "OTEL_HOSTNAME": "127.0.0.1",
            "OTEL_PORT": str(collector.port),
            "OTEL_SERVICE_NAME": "relay-client",
        }
        with (
            running_server("--store", f"sqlite:///{tmp_path / 'events.db'}", env=server_env) as server,
            running_client(server, [repository], target.url, "traced", env=client_env) as client,
            httpx.Client() as http,
        ):
            client.wait_connected()
            delivery_id = post_webhook(http, server)
            wait_until(lambda: target.delivered_ids() == [delivery_id], message="the delivery")
            spans = wait_until(
                lambda: len(found := _by_name(exported_spans(collector), delivery_id)) >= 5 and found,
                message="server and client spans at the collector",
            )
            wait_until(
                lambda: any(
                    attrs.get("outcome") == "stored" and value == 1
                    for _, attrs, value in exported_sums(collector, "gitstafette_webhooks_received")
                ),
                message="the webhook counter over OTLP",
            )

    http_span, ingest, store, stream, deliver = (
        spans["POST /v1/github/"],
        spans["ingest"],
        spans["store append"],
        spans["stream"],
        spans["deliver"],
    )
    assert len({s.trace_id for s in (http_span, ingest, store, stream, deliver)}) == 1
    assert http_span.kind == SPAN_KIND_SERVER and http_span.parent_span_id == ""
    assert ingest.parent_span_id == http_span.span_id
    assert store.parent_span_id == ingest.span_id
    assert stream.parent_span_id == ingest.span_id and stream.kind == SPAN_KIND_PRODUCER
    assert deliver.parent_span_id == stream.span_id and deliver.kind == SPAN_KIND_CLIENT
    assert {s.service for s in (http_span, ingest, store, stream)} == {"gitstafette-server"}
    assert deliver.service == "relay-client"
    assert ingest.attributes["gitstafette.outcome"] == "stored"
    assert stream.attributes["gitstafette.client_id"] == "traced"
    assert deliver.attributes["gitstafette.outcome"] == "delivered"
    assert deliver.attributes["http.response.status_code"] == 200
    # The target sees GitHub's headers only: the trace context does not travel to it.
    assert target.delivered()[0].header("traceparent") is None

    # Log lines about the webhook carry its delivery id and trace id (JSON: stderr is not a terminal here).
    stored = [line for line in json_lines(server.lines) if "stored as #" in line["event"]]
    assert [(line["delivery_id"], line["trace_id"]) for line in stored] == [(delivery_id, ingest.trace_id)]
    delivered = [line for line in json_lines(client.lines) if line["event"].startswith("delivered ")]
    assert [(line["delivery_id"], line["trace_id"]) for line in delivered] == [(delivery_id, ingest.trace_id)]

    client_points = [
        (attrs, value)
        for service, attrs, value in exported_sums(collector, "gitstafette_client_deliveries")
        if service == "relay-client"
    ]
    assert ({"repository": repository, "outcome": "delivered", "status": "200"}, 1) in client_points


def test_each_process_traces_as_itself_from_start_to_shutdown_and_not_at_all_while_off() -> None:
    off = Telemetry(OtelSettings(False, "gitstafette-server"), CollectorRegistry())
    assert off.tracer is None and off.grpc_interceptors() == [] and off.grpc_client_interceptors() is None

    # A server and a client in one process (the demo): each has its own tracer, its spans under its own name.
    exporters = {name: InMemorySpanExporter() for name in ("gitstafette-server", "gitstafette-client")}
    for name, exporter in exporters.items():
        tracing = Tracing(OtelSettings(True, name), exporter)
        tracing.tracer.start_span("before start").end()
        tracing.start()
        tracing.tracer.start_span(f"span of {name}").end()
        tracing.shutdown()
        tracing.tracer.start_span("after shutdown").end()
    for name, exporter in exporters.items():
        [span] = exporter.get_finished_spans()
        assert span.name == f"span of {name}"
        assert span.resource.attributes["service.name"] == name


def test_the_original_variables_and_the_standard_ones() -> None:
    original = {"OTEL_HOSTNAME": "collector", "OTEL_PROTOCOL": "http", "OTEL_TRACE_SAMPLING_RATE": "0.25"}
    settings = OtelSettings.from_env(True, "gitstafette-server", original)
    assert settings.traces_endpoint == "http://collector:4318/v1/traces"
    assert settings.metrics_endpoint == "http://collector:4318/v1/metrics"
    assert settings.traces_protocol == settings.metrics_protocol == "http/protobuf"
    assert settings.sampling_rate == 0.25

    standard = {
        **original,
        "OTEL_PORT": "5555",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:443",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": "relay",
    }
    settings = OtelSettings.from_env(True, "gitstafette-server", standard)
    assert settings.traces_endpoint is None  # the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT itself
    assert settings.metrics_endpoint == "http://collector:5555"
    assert settings.traces_protocol == "grpc" and settings.sampling_rate is None
    assert settings.service_name == "relay"
    assert not OtelSettings.from_env(False, "gitstafette-client", standard).enabled


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_PROTOCOL", "udp"),
        ("OTEL_PORT", "http"),
        ("OTEL_TRACE_SAMPLING_RATE", "2"),
        ("OTEL_TRACE_SAMPLING_RATE", "x"),
    ],
)
def test_a_variable_that_cannot_be_used_is_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        OtelSettings.from_env(True, "gitstafette-server", {variable: value})


def test_a_server_given_a_bad_variable_says_so_and_stops() -> None:
    from tests.utils import ServerProcess

    server = ServerProcess("--store", "memory://", env={"OTEL_ENABLED": "true", "OTEL_TRACE_SAMPLING_RATE": "1.5"})
    try:
        with pytest.raises(RuntimeError, match="OTEL_TRACE_SAMPLING_RATE"):
            server.start()
    finally:
        server.kill()
    assert server.process is not None and server.process.returncode == 2


def test_a_chained_relay_continues_the_trace_into_the_next_server(tmp_path: Path) -> None:
    """server A → client (target grpc://B, WebhookEventPush) → server B: one trace over both relays."""
    repository = repository_of()
    with RecordingTarget() as collector:
        env = {**FAST_EXPORT, "OTEL_ENABLED": "true", "OTEL_PROTOCOL": "http", "OTEL_HOSTNAME": "127.0.0.1"}
        env["OTEL_PORT"] = str(collector.port)
        with (
            running_server("--store", f"sqlite:///{tmp_path / 'a.db'}", env=env) as first,
            running_server("--store", f"sqlite:///{tmp_path / 'b.db'}", env={**env, "OTEL_SERVICE_NAME": "b"}) as next_,
            running_client(first, [repository], f"grpc://{next_.grpc_target}", "chain", env=env) as client,
            httpx.Client() as http,
        ):
            client.wait_connected()
            delivery_id = post_webhook(http, first)

            def chain() -> dict[tuple[str, str], ExportedSpan] | None:
                """The spans in the trace of the first server's ingest span, once the client's and the
                next server's are there too (each process exports its own batches, in no set order)."""
                spans = exported_spans(collector)
                first_ingest = [
                    s
                    for s in spans
                    if (s.service, s.name) == ("gitstafette-server", "ingest")
                    and s.attributes["gitstafette.delivery_id"] == delivery_id
                ]
                if not first_ingest:
                    return None
                ours = {(s.service, s.name): s for s in spans if s.trace_id == first_ingest[0].trace_id}
                return ours if CHAIN_SPANS <= set(ours) else None

            ours = wait_until(chain, message="the spans of both relays in one trace")

    deliver = ours[("gitstafette-client", "deliver")]
    push_client = ours[("gitstafette-client", PUSH)]
    push_server = ours[("b", PUSH)]
    ingest_b = ours[("b", "ingest")]
    assert push_client.parent_span_id == deliver.span_id and push_client.kind == SPAN_KIND_CLIENT
    assert push_server.parent_span_id == push_client.span_id and push_server.kind == SPAN_KIND_SERVER
    assert ingest_b.parent_span_id == push_server.span_id
    assert ingest_b.attributes["gitstafette.outcome"] == "stored"


async def test_each_stream_of_a_fanned_out_event_carries_its_own_span(tmp_path: Path) -> None:
    """The event's message is built once for every stream, its trace context is not: each client id's copy
    names that client's own ``stream`` span, in the webhook's trace."""
    with RecordingTarget() as collector:
        env = {**FAST_EXPORT, "OTEL_ENABLED": "true", "OTEL_PROTOCOL": "http", "OTEL_HOSTNAME": "127.0.0.1"}
        env["OTEL_PORT"] = str(collector.port)
        with running_server("--store", f"sqlite:///{tmp_path / 'events.db'}", env=env) as server:
            repository = repository_of()
            client_ids = ["jenkins", "tekton", "argo"]
            async with contextlib.AsyncExitStack() as stack:
                streams = [
                    await stack.enter_async_context(AckStream(server.grpc_target, c, [repository])) for c in client_ids
                ]
                with httpx.Client() as http:
                    delivery_id = post_webhook(http, server)
                events = [await stream.next_event() for stream in streams]
            parents = {}
            for client_id, event in zip(client_ids, events, strict=True):
                assert event is not None and event.webhook_event.event_id == delivery_id
                _, trace_id, span_id, _ = event.trace_context["traceparent"].split("-")
                parents[client_id] = (trace_id, span_id)

            def stream_spans() -> dict[str, ExportedSpan] | None:
                spans = {
                    s.attributes["gitstafette.client_id"]: s
                    for s in exported_spans(collector)
                    if s.name == "stream" and s.attributes.get("gitstafette.delivery_id") == delivery_id
                }
                return spans if len(spans) == len(client_ids) else None

            spans = wait_until(stream_spans, message="a stream span per client id")
    assert len({trace_id for trace_id, _ in parents.values()}) == 1
    assert len({span_id for _, span_id in parents.values()}) == len(client_ids)
    assert {c: (s.trace_id, s.span_id) for c, s in spans.items()} == parents
