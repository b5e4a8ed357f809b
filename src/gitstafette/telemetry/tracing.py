"""Traces: one per webhook, from the server's ingest to the client's delivery.

The server's ``ingest`` span (under the HTTP server span of the OpenTelemetry ASGI middleware, or the
pushing client's) holds the ``store append`` span; its context is kept with the event, so the ``stream``
span, made when the event goes out on a client's stream, continues the same trace. That span's context
travels in ``RelayedEvent.trace_context`` (W3C ``traceparent``), and the client's ``deliver`` span
continues from it: a trace viewer shows the whole journey.

Off by default. Each process (a server, a client) owns its :class:`Tracing`, made with it, and hands its
tracer to the components that make spans (``Ingest``, ``StreamResponses``, the client's lanes); while off
they hold None and the hot paths test only that: no span, no context. The tracer provider is the
process's too, given to the instrumentation (the ASGI middleware, the gRPC interceptors) rather than set
as OpenTelemetry's global one: a server and a client in one process (the demo) trace each as itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from gitstafette import __version__
from gitstafette.config.otel import OtelSettings, Protocol
from gitstafette.model import WebhookEvent

__all__ = [
    "Span",
    "Status",
    "StatusCode",
    "Tracer",
    "Tracing",
    "context_of",
    "current_trace_context",
    "event_attributes",
    "end_delivery_span",
    "inject_into",
    "start_delivery_span",
    "start_stream_span",
    "trace_id_of",
]

logger = logging.getLogger(__name__)


def span_exporter(protocol: Protocol, endpoint: str | None) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(endpoint=endpoint)


def resource(settings: OtelSettings) -> Resource:
    """The service's resource: its name and version, plus ``OTEL_RESOURCE_ATTRIBUTES``."""
    return Resource.create({"service.name": settings.service_name, "service.version": __version__})


class Tracing:
    """The traces of one process: its tracer provider, and the :attr:`tracer` handed to what makes spans.

    Made with the process, so that its components get the tracer when they are built; no span leaves
    before :meth:`start` adds the batch processor that exports them (to ``exporter``, by default the OTLP
    exporter the settings name), nor after :meth:`shutdown`.
    """

    def __init__(self, settings: OtelSettings, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self._exporter = exporter
        sampler = None if settings.sampling_rate is None else ParentBased(TraceIdRatioBased(settings.sampling_rate))
        self.provider = TracerProvider(resource=resource(settings), sampler=sampler)
        self.tracer: Tracer = self.provider.get_tracer("gitstafette", __version__)

    def start(self) -> None:
        """Export spans from now on, through a batch processor (its own thread)."""
        exporter = self._exporter or span_exporter(self.settings.traces_protocol, self.settings.traces_endpoint)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))

    def shutdown(self) -> None:
        """Export the spans still pending and stop (at the end of the process)."""
        self.provider.shutdown()

    def grpc_client_interceptors(self) -> list[Any]:
        """OpenTelemetry's gRPC client interceptors (a span per call, the context sent in its metadata)."""
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(aio_client_interceptors(tracer_provider=self.provider))  # type: ignore[no-untyped-call]

    def grpc_server_interceptors(self) -> list[Any]:
        """OpenTelemetry's gRPC server interceptor for ``WebhookEventPush`` (a chained relay's push continues
        its caller's trace). The long-lived streams get no span of their own: each event has its ``stream``
        span; health checks and reflection are not traced."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=filters.method_name("WebhookEventPush")
        )
        return [interceptor]

    def __repr__(self) -> str:
        return f"Tracing({self.settings.service_name!r})"


def current_trace_context() -> tuple[tuple[str, str], ...]:
    """The current span's context as W3C headers (``traceparent``, ``tracestate``), to keep with an event."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return tuple(carrier.items())


def context_of(trace_context: Iterable[tuple[str, str]] | Mapping[str, str]) -> Context:
    """The context to continue from, out of W3C headers kept with an event or sent with it."""
    carrier = dict(trace_context.items() if isinstance(trace_context, Mapping) else trace_context)
    return extract(carrier)


def inject_into(span: Span, carrier: MutableMapping[str, str]) -> None:
    """Write ``span``'s context into ``carrier`` (a protobuf map field works as one)."""
    inject(carrier, context=trace.set_span_in_context(span))


def event_attributes(event: WebhookEvent) -> dict[str, str | int]:
    return {
        "gitstafette.repository_id": event.repository_id,
        "gitstafette.delivery_id": event.delivery_id,
        "gitstafette.event": event.event_type,
        "gitstafette.sequence": event.sequence,
    }


def start_stream_span(active: Tracer, event: WebhookEvent, client_id: str, carrier: MutableMapping[str, str]) -> Span:
    """The server's ``stream`` span of an event going out to ``client_id``, in the event's trace (when it
    has one); its context is written into ``carrier``, the relayed message's ``trace_context``."""
    parent = context_of(event.trace_context) if event.trace_context else None
    span = active.start_span("stream", context=parent, kind=SpanKind.PRODUCER, attributes=event_attributes(event))
    span.set_attribute("gitstafette.client_id", client_id)
    inject_into(span, carrier)
    return span


def start_delivery_span(active: Tracer, event: WebhookEvent, target: str) -> tuple[Span, object]:
    """The client's ``deliver`` span, continuing the trace the server sent with the event; it is the
    running task's current span until :func:`end_delivery_span` (so a ``grpc://`` target's call, made by
    the instrumented channel, continues the trace into the next server). Returns the span and the token
    that restores the context."""
    parent = context_of(event.trace_context) if event.trace_context else None
    span = active.start_span("deliver", context=parent, kind=SpanKind.CLIENT, attributes=event_attributes(event))
    span.set_attribute("server.address", target)
    return span, attach(trace.set_span_in_context(span))


def end_delivery_span(
    span: Span, token: object, acknowledged: bool | None, attempts: int, status_code: int, reason: str
) -> None:
    """``acknowledged`` None: the delivery was abandoned (shutdown, or its stream ended)."""
    detach(token)  # type: ignore[arg-type]
    outcome = "abandoned" if acknowledged is None else "delivered" if acknowledged else "dead-letter"
    span.set_attribute("gitstafette.outcome", outcome)
    span.set_attribute("gitstafette.attempts", attempts)
    if status_code:
        span.set_attribute("http.response.status_code", status_code)
    if acknowledged is False:
        span.set_status(Status(StatusCode.ERROR, reason[:200]))
    span.end()


def trace_id_of(trace_context: Iterable[tuple[str, str]]) -> str:
    """The trace id (32 hex digits) in W3C headers, or "" without a valid one."""
    for name, value in trace_context:
        if name == "traceparent":
            parts = value.split("-")
            return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
    return ""
