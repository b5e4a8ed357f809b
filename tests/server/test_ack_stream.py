"""The acknowledged stream: at-least-once, fan-out between client ids, shared work within one."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from tests.grpc_clients import AckStream
from tests.utils import FIXTURES, ServerProcess, github_request

PUSH = FIXTURES / "push.0.json"


async def post(server: ServerProcess, repository_id: str = "186853002", count: int = 1) -> list[str]:
    """Post ``count`` push webhooks for ``repository_id``; their delivery ids, in order."""
    delivered = []
    async with httpx.AsyncClient() as http:
        for _ in range(count):
            headers, body, _ = github_request(PUSH)
            headers["X-GitHub-Hook-Installation-Target-ID"] = repository_id
            response = await http.post(f"{server.url}/v1/github/", headers=headers, content=body)
            assert response.status_code == 201, response.text
            delivered.append(headers["X-GitHub-Delivery"])
    return delivered


async def test_unacknowledged_events_are_sent_again_after_reconnect(server: ServerProcess) -> None:
    ids = await post(server, count=3)
    async with AckStream(server.grpc_target, "ci", ["186853002"]) as stream:
        events = [await stream.next_event() for _ in ids]
        assert [e.webhook_event.event_id for e in events if e] == ids
        assert [e.sequence for e in events if e] == [1, 2, 3]
        assert events[0] is not None
        await stream.ack(events[0])
        # Wait until the server has taken the ack: a status request sees the cursor move.
        await _until_pending(server, "ci", 2)

    async with AckStream(server.grpc_target, "ci", ["186853002"]) as stream:
        again = [await stream.next_event() for _ in range(2)]
        assert [e.webhook_event.event_id for e in again if e] == ids[1:]
        for event in again:
            assert event is not None
            await stream.ack(event)
        await _until_pending(server, "ci", 0)

    # Everything acknowledged: the next stream starts with the next new event.
    async with AckStream(server.grpc_target, "ci", ["186853002"]) as stream:
        fresh = await post(server)
        event = await stream.next_event()
        assert event is not None and event.webhook_event.event_id == fresh[0]


async def _until_pending(server: ServerProcess, client_id: str, pending: int) -> None:
    from gitstafette._proto import gitstafette_pb2 as pb
    from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GitstafetteStub(channel)
        for _ in range(200):
            status = await stub.WebhookEventStatus(
                pb.WebhookEventStatusRequest(client_id=client_id, repository_id="186853002")
            )
            if status.count == pending:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{client_id} still has {status.count} pending, expected {pending}")


async def test_every_client_id_gets_every_event(server: ServerProcess) -> None:
    async with (
        AckStream(server.grpc_target, "jenkins", ["186853002"]) as jenkins,
        AckStream(server.grpc_target, "tekton", ["186853002"]) as tekton,
    ):
        ids = await post(server, count=5)
        for stream in (jenkins, tekton):
            assert await stream.receive_and_ack(len(ids)) == ids


async def test_connections_of_one_client_id_split_the_work(server: ServerProcess) -> None:
    repositories = ["101", "102", "103", "104"]
    async with (
        AckStream(server.grpc_target, "shared", repositories) as first,
        AckStream(server.grpc_target, "shared", repositories) as second,
    ):
        posted: dict[str, list[str]] = {}
        for repository_id in repositories:
            posted[repository_id] = await post(server, repository_id, count=5)
        received: dict[int, list[tuple[str, str]]] = {0: [], 1: []}
        total = sum(len(ids) for ids in posted.values())

        async def drain(index: int, stream: AckStream) -> None:
            while sum(len(v) for v in received.values()) < total:
                event = await stream.next_event(timeout=0.5)
                if event is None:
                    continue
                received[index].append((event.repository_id, event.webhook_event.event_id))
                await stream.ack(event)

        await asyncio.wait_for(asyncio.gather(drain(0, first), drain(1, second)), 30)

    everything = received[0] + received[1]
    assert len(everything) == total, "an event was sent twice"
    for repository_id, ids in posted.items():
        assert sorted(d for r, d in everything if r == repository_id) == sorted(ids)
        # One connection serves a repository, in order.
        holders = [i for i in (0, 1) if any(r == repository_id for r, _ in received[i])]
        assert len(holders) == 1
        assert [d for r, d in received[holders[0]] if r == repository_id] == ids
    assert received[0] and received[1], "one connection did all the work"


async def test_a_connection_that_leaves_hands_its_unacknowledged_events_over(server: ServerProcess) -> None:
    async with AckStream(server.grpc_target, "pair", ["186853002"]) as first:
        ids = await post(server, count=3)
        event = await first.next_event()
        assert event is not None
        await first.ack(event)
        async with AckStream(server.grpc_target, "pair", ["186853002"]) as second:
            # The first connection holds the repository; the second gets nothing while it does.
            assert await second.next_event(timeout=0.5) is None
            await _until_pending(server, "pair", 2)
            await first.close()
            taken = [await second.next_event() for _ in range(2)]
            assert [e.webhook_event.event_id for e in taken if e] == ids[1:]
            assert all(e is not None and e.redelivery == 1 for e in taken)


async def test_failure_records_a_dead_letter_and_moves_on(server: ServerProcess) -> None:
    ids = await post(server, count=2)
    async with AckStream(server.grpc_target, "strict", ["186853002"]) as stream:
        first = await stream.next_event()
        second = await stream.next_event()
        assert first is not None and second is not None
        await stream.fail(first, "target answered 400", 400)
        await stream.ack(second)
        await _until_pending(server, "strict", 0)
    listed = httpx.get(f"{server.url}/v1/events/186853002").json()["events"]
    states = {e["delivery_id"]: e["clients"]["strict"] for e in listed}
    assert states[ids[0]] == {"state": "dead-letter", "reason": "target answered 400", "status_code": 400}
    assert states[ids[1]] == {"state": "acknowledged"}


async def test_subscribing_to_an_unwatched_repository_is_refused(tmp_path: pytest.TempPathFactory) -> None:
    from tests.utils import running_server

    with running_server("--store", "memory://", "--repositories", "186853002") as server:
        async with AckStream(server.grpc_target, "ci", ["999"]) as stream:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stream.next_event()
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            assert "not watched" in (error.value.details() or "")


async def test_a_replayed_dead_letter_is_sent_again_until_acknowledged(server: ServerProcess) -> None:
    ids = await post(server, count=3)
    async with AckStream(server.grpc_target, "strict", ["186853002"]) as stream:
        events = [await stream.next_event() for _ in ids]
        assert all(events)
        await stream.fail(events[1], "target answered 404", 404)  # type: ignore[arg-type]
        await stream.ack(events[0])  # type: ignore[arg-type]
        await stream.ack(events[2])  # type: ignore[arg-type]
        await _until_pending(server, "strict", 0)
        letters = httpx.get(f"{server.url}/v1/dead-letters", params={"client_id": "strict"}).json()["dead_letters"]
        assert [(d["sequence"], d["delivery_id"], d["status_code"]) for d in letters] == [(2, ids[1], 404)]

        # Replay all dead letters of the repository while the client is connected: it comes at once.
        answer = httpx.post(
            f"{server.url}/v1/dead-letters/replay", json={"client_id": "strict", "repository_id": "186853002"}
        )
        assert answer.status_code == 202 and answer.json()["replayed"] == [2]
        replayed = await stream.next_event()
        assert replayed is not None and replayed.replay and replayed.webhook_event.event_id == ids[1]
        # Not acknowledged before the client goes away.

    # Replays survive a reconnect, and one of an acknowledged event can be asked for while offline too.
    answer = httpx.post(
        f"{server.url}/v1/dead-letters/replay",
        json={"client_id": "strict", "repository_id": "186853002", "sequence": 1},
    )
    assert answer.status_code == 202
    async with AckStream(server.grpc_target, "strict", ["186853002"]) as stream:
        again = [await stream.next_event(), await stream.next_event()]
        assert sorted(e.webhook_event.event_id for e in again if e and e.replay) == sorted(ids[:2])
        for event in again:
            await stream.ack(event)  # type: ignore[arg-type]
        assert await stream.next_event(timeout=0.5) is None
    for _ in range(100):
        if not httpx.get(f"{server.url}/v1/dead-letters").json()["dead_letters"]:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the delivered replay left its dead letter behind")
    states = {
        e["delivery_id"]: e["clients"]["strict"]["state"]
        for e in httpx.get(f"{server.url}/v1/events/186853002").json()["events"]
    }
    assert states == {i: "acknowledged" for i in ids}


async def test_replay_of_an_unknown_event_is_refused(server: ServerProcess) -> None:
    await post(server)
    async with httpx.AsyncClient() as http:
        missing = await http.post(
            f"{server.url}/v1/dead-letters/replay", json={"client_id": "x", "repository_id": "186853002", "sequence": 9}
        )
        assert missing.status_code == 404
        bad = await http.post(f"{server.url}/v1/dead-letters/replay", json={"repository_id": "186853002"})
        assert bad.status_code == 400
        unknown = await http.post(f"{server.url}/v1/dead-letters/replay", json={"client_id": "x", "repository_id": "5"})
        assert unknown.status_code == 404


async def test_a_name_not_seen_yet_is_served_once_its_first_event_arrives(server: ServerProcess) -> None:
    """A client may start before a repository's first webhook and subscribe by owner/name."""
    async with AckStream(server.grpc_target, "early", ["186853261", "Codertocat/Hello-World"]) as stream:
        async with httpx.AsyncClient() as http:
            # The numeric subscription is served at once, although the name is still unknown.
            ping, ping_body, ping_repository = github_request(FIXTURES / "ping.0.json")
            assert ping_repository == "186853261"
            assert (await http.post(f"{server.url}/v1/github/", headers=ping, content=ping_body)).status_code == 201
            first = await stream.next_event()
            assert first is not None and first.repository_id == "186853261"
            # The first webhook of Codertocat/Hello-World (a repository hook, routed by its id) names it.
            push, push_body, push_repository = github_request(FIXTURES / "push.0.json")
            assert (await http.post(f"{server.url}/v1/github/", headers=push, content=push_body)).status_code == 201
        second = await stream.next_event()
        assert second is not None and second.repository_id == push_repository
        assert second.webhook_event.event_id == push["X-GitHub-Delivery"]


async def test_acknowledgements_may_travel_together(server: ServerProcess) -> None:
    from gitstafette._proto import gitstafette_pb2 as pb

    ids = await post(server, count=4)
    async with AckStream(server.grpc_target, "batch", ["186853002"]) as stream:
        events = [await stream.next_event() for _ in ids]
        assert all(events)
        acks = [pb.Ack(repository_id=e.repository_id, sequence=e.sequence) for e in events[:3] if e]
        await stream.call.write(pb.StreamRequest(acks=pb.Acks(acks=acks)))
        await _until_pending(server, "batch", 1)
    async with AckStream(server.grpc_target, "batch", ["186853002"]) as stream:
        again = await stream.next_event()
        assert again is not None and again.webhook_event.event_id == ids[3]


async def test_a_connection_left_without_repositories_hears_so_at_once(server: ServerProcess) -> None:
    async with AckStream(server.grpc_target, "solo", ["186853002"]) as first:
        await post(server)
        assert await first.next_event() is not None
        assert first.assigned == ["186853002"]
        async with AckStream(server.grpc_target, "solo", ["186853002"]) as second:
            # The first connection keeps the only repository; the second is told it serves none now,
            # well before the first heartbeat (15 s).
            got = await asyncio.wait_for(second.responses.get(), 10)
            assert not isinstance(got, BaseException) and got is not None
            assert got.WhichOneof("kind") == "subscribed" and list(got.subscribed.repository_ids) == []


@pytest.mark.parametrize("accepts_batches", [True, False])
async def test_events_that_are_ready_travel_together_to_a_client_that_takes_batches(
    server: ServerProcess, accepts_batches: bool
) -> None:
    # Stored before the stream opens: the lane hands them all to the connection at once.
    ids = await post(server, count=100)
    async with AckStream(server.grpc_target, "ci", ["186853002"], accepts_batches=accepts_batches) as stream:
        events = [await stream.next_event() for _ in ids]
        assert [e.webhook_event.event_id for e in events if e] == ids
        assert [e.sequence for e in events if e] == list(range(1, 101))
        for event in events:
            assert event is not None
            await stream.ack(event)
        await _until_pending(server, "ci", 0)
        assert await stream.next_event(timeout=0.2) is None, "each event once"
    if accepts_batches:
        assert max(stream.message_sizes) > 1, stream.message_sizes
        assert max(stream.message_sizes) <= 64  # BATCH_MAX_EVENTS
    else:
        # A client that did not ask (an older one) gets one event per message, as before.
        assert set(stream.message_sizes) == {1}
