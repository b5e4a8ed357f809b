"""An event fanned out to many streams is converted to protobuf once, and each stream's message is its own; the
original stream's messages hold as many events as fit one message."""

from __future__ import annotations

from types import SimpleNamespace

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette.model import WebhookEvent, event_to_pb
from gitstafette.server.stream_messages import EventMessages, FetchResponses

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


def test_the_original_stream_sends_as_many_events_as_fit_one_message_and_at_least_one() -> None:
    sent: list[tuple[str, str, int, str]] = []
    responses = FetchResponses(SimpleNamespace(record=lambda *args: sent.append(args)), max_body_bytes=100)  # type: ignore[arg-type]
    events = [event(f"d{i}", i, body=b"x" * 40) for i in range(1, 5)]
    assert responses.fit_one_message(events) == events[:2]
    assert responses.fit_one_message([event("big", 9, body=b"x" * 500), *events]) == [event("big", 9, b"x" * 500)]
    message = responses.events("ci", "186853002", events[:2])
    assert [e.event_id for e in message.webhook_events] == ["d1", "d2"]
    assert sent == [("ci", "186853002", 1, "sent"), ("ci", "186853002", 2, "sent")]
    assert responses.heartbeat() == pb.WebhookEventsResponse()
