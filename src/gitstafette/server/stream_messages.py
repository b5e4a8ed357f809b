"""What the streams send, as protobuf: the one place that turns what the dispatcher hands an acknowledged stream
(``dispatch.OutboxItem``) into ``StreamResponse`` messages, events of the original ``FetchWebhookEvents`` stream
into ``WebhookEventsResponse`` messages, and an event into its ``WebhookEvent`` message once for all the streams
it goes out on."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from opentelemetry.trace import Span, Tracer

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette.model import WebhookEvent, event_to_pb
from gitstafette.server.audit import AuditLog
from gitstafette.server.dispatch import Outgoing
from gitstafette.telemetry import tracing

__all__ = ["BATCH_MAX_BYTES", "BATCH_MAX_EVENTS", "EventMessages", "FetchResponses", "StreamResponses"]

#: Most events, and most body bytes (beyond the first event), in one message of the acknowledged stream to
#: a client that takes batches: events that are ready travel together, since each gRPC message costs both
#: sides far more CPU than one more event in it; the cap keeps a batch well below the message size limit.
BATCH_MAX_EVENTS = 64
BATCH_MAX_BYTES = 1024 * 1024

#: Protobuf messages of the newest events kept, so that an event fanned out to many streams is converted once:
#: at most this many, and this many body bytes (at least the newest one is kept).
MESSAGE_CACHE_EVENTS = 64
MESSAGE_CACHE_BYTES = 16 * 1024 * 1024


class EventMessages:
    """``event_to_pb`` once per event, not once per stream: the message of a recent event is built for the first
    stream it goes to and shared by the others. It is never changed once built (protobuf copies it into each
    stream's own message, whose per-stream fields are set there).

    Keyed by (repository, sequence, delivery id), not by the event object: a store may hand each stream a copy
    of its own.
    """

    def __init__(self, max_events: int = MESSAGE_CACHE_EVENTS, max_bytes: int = MESSAGE_CACHE_BYTES) -> None:
        self._messages: OrderedDict[tuple[str, int, str], tuple[pb.WebhookEvent, int]] = OrderedDict()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes

    def get(self, event: WebhookEvent) -> pb.WebhookEvent:
        key = (event.repository_id, event.sequence, event.delivery_id)
        cached = self._messages.get(key)
        if cached is not None:
            return cached[0]
        message = event_to_pb(event)
        self._messages[key] = (message, len(event.body))
        self._bytes += len(event.body)
        while len(self._messages) > 1 and (len(self._messages) > self._max_events or self._bytes > self._max_bytes):
            _, (_, size) = self._messages.popitem(last=False)
            self._bytes -= size
        return message

    def __repr__(self) -> str:
        return f"EventMessages(events={len(self._messages)}, bytes={self._bytes})"


class StreamResponses:
    """The messages of the acknowledged stream: events (one, or a batch), the subscription, heartbeats."""

    def __init__(
        self, server_id: str, audit: AuditLog, messages: EventMessages | None = None, tracer: Tracer | None = None
    ) -> None:
        self.server_id = server_id
        self.audit = audit
        #: the server's tracer (a ``stream`` span per event sent); None while tracing is off
        self.tracer = tracer
        #: shared with the original stream's responses (:class:`FetchResponses`)
        self.messages = messages or EventMessages()

    def subscribed(self, repository_ids: Sequence[str]) -> pb.StreamResponse:
        return pb.StreamResponse(subscribed=pb.Subscribed(server_id=self.server_id, repository_ids=repository_ids))

    @staticmethod
    def heartbeat() -> pb.StreamResponse:
        return pb.StreamResponse(heartbeat=pb.Heartbeat(server_time_unix_nanos=time.time_ns()))

    def events(self, client_id: str, batch: Sequence[Outgoing], spans: list[Span]) -> pb.StreamResponse:
        """One message of ``batch``'s events (a single one as ``event``, several as ``events``); with tracing,
        their stream spans are added to ``spans``, to be ended once the message is handed to gRPC."""
        relayed = [self._relayed(client_id, outgoing, spans) for outgoing in batch]
        if len(relayed) == 1:
            return pb.StreamResponse(event=relayed[0])
        return pb.StreamResponse(events=pb.RelayedEvents(events=relayed))

    def _relayed(self, client_id: str, outgoing: Outgoing, spans: list[Span]) -> pb.RelayedEvent:
        event = outgoing.event
        # Recorded as it is handed to gRPC: once yielded, its acknowledgement may come before we resume.
        self.audit.record(client_id, event.repository_id, event.sequence, "sent")
        relayed = pb.RelayedEvent(
            repository_id=event.repository_id,
            sequence=event.sequence,
            webhook_event=self.messages.get(event),
            received_at_unix_nanos=event.received_at_ns,
            redelivery=outgoing.redelivery,
            replay=outgoing.replay,
        )
        if self.tracer is not None:
            spans.append(tracing.start_stream_span(self.tracer, event, client_id, relayed.trace_context))
        return relayed

    def __repr__(self) -> str:
        return f"StreamResponses(server_id={self.server_id!r}, {self.messages!r})"


class FetchResponses:
    """The messages of the original ``FetchWebhookEvents`` stream: events, as many as fit one message, and
    heartbeats.

    :param max_body_bytes: the largest body the server takes; one message carries that and its headers
    """

    def __init__(self, audit: AuditLog, max_body_bytes: int, messages: EventMessages | None = None) -> None:
        self.audit = audit
        self.max_body_bytes = max_body_bytes
        #: shared with the acknowledged stream's responses (:class:`StreamResponses`)
        self.messages = messages or EventMessages()

    def fit_one_message(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        """The first events whose bodies add up to at most ``max_body_bytes`` (always at least one).

        A response carries a batch in one gRPC message, whose limit is the body limit plus room for headers:
        two large bodies in one batch would go over it and fail the stream every time it is retried.
        """
        total = 0
        for count, event in enumerate(events):
            total += len(event.body)
            if count and total > self.max_body_bytes:
                return events[:count]
        return events

    def events(self, client_id: str, repository_id: str, events: Sequence[WebhookEvent]) -> pb.WebhookEventsResponse:
        """One message of ``events`` (fitted by :meth:`fit_one_message`), recorded as sent to ``client_id``."""
        for event in events:
            self.audit.record(client_id, repository_id, event.sequence, "sent")
        return pb.WebhookEventsResponse(webhook_events=[self.messages.get(event) for event in events])

    @staticmethod
    def heartbeat() -> pb.WebhookEventsResponse:
        """An empty response: keeps proxies from cutting an idle stream."""
        return pb.WebhookEventsResponse()

    def __repr__(self) -> str:
        return f"FetchResponses(max_body_bytes={self.max_body_bytes}, {self.messages!r})"
