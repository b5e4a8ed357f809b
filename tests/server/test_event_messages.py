"""An event fanned out to many streams is converted to protobuf once, and each stream's message is its own."""

from __future__ import annotations

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette.model import WebhookEvent, event_to_pb
from gitstafette.server.stream_messages import EventMessages

HEADERS = (("X-GitHub-Event", "push"), ("Content-Type", "application/json"))


def event(delivery_id: str, sequence: int, body: bytes = b"{}", repository_id: str = "186853002") -> WebhookEvent:
    return WebhookEvent(repository_id, delivery_id, "push", body, HEADERS, 1, sequence=sequence)


def test_an_event_is_converted_once_even_when_each_stream_reads_a_copy_of_its_own() -> None:
    messages = EventMessages()
    first = messages.get(event("d1", 1))
    assert messages.get(event("d1", 1)) is first
    assert first == event_to_pb(event("d1", 1))
    # Another delivery under the same sequence (one whose commit failed left it), another repository: not it.
    assert messages.get(event("d2", 1)).event_id == "d2"
    assert messages.get(event("d1", 1, repository_id="537845873")) is not first


def test_each_stream_message_is_its_own_copy() -> None:
    shared = EventMessages().get(event("d1", 1))
    one = pb.RelayedEvent(sequence=1, webhook_event=shared, redelivery=0)
    other = pb.RelayedEvent(sequence=1, webhook_event=shared, redelivery=1)
    one.trace_context["traceparent"] = "00-one"
    one.webhook_event.body = b"changed"
    assert shared.body == b"{}" and other.webhook_event.body == b"{}"
    assert dict(other.trace_context) == {} and other.redelivery == 1


def test_only_the_newest_events_are_kept_within_a_count_and_a_byte_budget() -> None:
    messages = EventMessages(max_events=3, max_bytes=1000)
    kept = [messages.get(event(f"d{i}", i)) for i in range(1, 5)]
    assert messages.get(event("d4", 4)) is kept[3]
    assert messages.get(event("d1", 1)) is not kept[0], "the oldest went"
    # A body beyond the byte budget is still converted, and kept until the next one.
    big = messages.get(event("big", 9, body=b"x" * 5000))
    assert messages.get(event("big", 9, body=b"x" * 5000)) is big
    assert repr(messages) == "EventMessages(events=1, bytes=5000)"
