"""What the client writes on its stream: acknowledgements that queued up go together, order is kept."""

from __future__ import annotations

from gitstafette.client.consumer import Stream


async def _drain(stream: Stream) -> list[tuple[str, list[int]]]:
    sent = []
    async for request in stream.requests():
        kind = request.WhichOneof("kind")
        if kind == "acks":
            sent.append(("acks", [a.sequence for a in request.acks.acks]))
        elif kind == "ack":
            sent.append(("ack", [request.ack.sequence]))
        elif kind == "failure":
            sent.append(("failure", [request.failure.sequence]))
    return sent


async def test_queued_acks_are_sent_as_one_message_and_order_is_kept() -> None:
    stream = Stream(1, "127.0.0.1:1")
    for sequence in (1, 2, 3):
        assert stream.ack("r", sequence)
    assert stream.fail("r", 4, "target answered 400", 400)
    assert stream.ack("r", 5)
    stream.finish()
    assert not stream.ack("r", 6)  # after finish nothing more is queued
    assert await _drain(stream) == [("acks", [1, 2, 3]), ("failure", [4]), ("ack", [5])]


async def test_a_lone_ack_stays_a_plain_ack() -> None:
    stream = Stream(1, "127.0.0.1:1")
    stream.ack("r", 7)
    stream.finish()
    assert await _drain(stream) == [("ack", [7])]
