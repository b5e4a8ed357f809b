"""An OTLP/HTTP collector stand-in: a RecordingTarget on loopback, whose requests are decoded as the real
OTLP protobuf messages (opentelemetry-proto)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.client.utils import RecordingTarget


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict (strings, ints, doubles and booleans)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int


def exported_spans(collector: RecordingTarget) -> list[ExportedSpan]:
    spans = []
    for post in collector.posts():
        if post.path != "/v1/traces":
            continue
        assert post.header("Content-Type") == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(post.body)
        for resource_spans in request.resource_spans:
            service = attributes(resource_spans.resource.attributes)["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ExportedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                            attributes(span.attributes),
                            span.status.code,
                        )
                    )
    return spans


def exported_sums(collector: RecordingTarget, name: str) -> list[tuple[str, dict[str, Any], float]]:
    """Every data point of the counter ``name`` exported over OTLP: (service, attributes, value), in order."""
    points = []
    for post in collector.posts():
        if post.path != "/v1/metrics":
            continue
        request = ExportMetricsServiceRequest.FromString(post.body)
        for resource_metrics in request.resource_metrics:
            service = attributes(resource_metrics.resource.attributes)["service.name"]
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        assert metric.sum.is_monotonic
                        for point in metric.sum.data_points:
                            value = point.as_double if point.HasField("as_double") else point.as_int
                            points.append((service, attributes(point.attributes), value))
    return points


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """A process's stderr as the JSON objects it logs, one a line (each line must be one)."""
    return [json.loads(line) for line in lines if line.strip()]
