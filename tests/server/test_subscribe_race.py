"""A stream that opens while an event of its repository is being stored gets that event, exactly once.

Every round opens a stream for a repository and a client id never seen, and stores an event at a chosen
moment of the subscription: before or after the k-th store call the server makes from then on, either
awaited there (stored completely in that gap) or started there and given a few scheduling points (so that
its steps interleave with the subscription's). Then a second event. The stream must deliver both, in order,
once each: an event in neither the subscription's read nor its wait (read, then wait from what the notifier
says by then) never comes, and the round times out.

Runs the real server in this process (gRPC on a free port, the real dispatcher and stores), on memory,
SQLite and Redis, for the original ``FetchWebhookEvents`` and the acknowledged stream (by repository id and
by owner/name, which the server resolves once that repository's first event is stored).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette.config import StoreConfig
from gitstafette.model import WebhookEvent
from gitstafette.server.server import Server
from gitstafette.store import EventStore, create_store
from tests.grpc_clients import OPTIONS, AckStream
from tests.in_process import in_process_server
from tests.redis_utils import SERVER_TESTS_DB, delete_prefix, redis_url, require_redis
from tests.utils import FIXTURES, github_request, running_server

#: the store calls a subscription may make, wrapped to give the rounds their moments
HOOKED = (
    "get_cursor",
    "start_cursor",
    "repository",
    "repositories",
    "resolve_repository",
    "read_after",
    "read_streamable_after",
    "replays",
    "wait_for_events",
    "wait_for_streamable",
)
#: the moments of a round: the k-th hooked call, before or after it, and how the event is stored there
#: (None: awaited in that gap; n: started there, then n scheduling points before the subscription goes on)
CALLS = range(6)
SIDES = ("before", "after")
HOWS: tuple[int | None, ...] = (None, 0, 1, 3)
MOMENTS = list(itertools.product(CALLS, SIDES, HOWS))
#: each moment this many times: 192 rounds per store and stream kind
REPEATS = 4
#: how long a round waits for an event that should be there (a missed one never comes)
EVENT_TIMEOUT_S = 5.0
#: rounds of the black-box test (a real server process, a real POST)
BLACK_BOX_ROUNDS = 160
#: a subscription that made no store call for this long rests: a moment it did not reach comes after it
QUIET_S = 0.05

STORES: dict[str, Callable[[Path], str]] = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'events.db'}",
    "redis": lambda tmp: redis_url(SERVER_TESTS_DB),
}


class Interleaver:
    """Wraps a store's read and wait calls so that a round can store an event at a chosen moment of them."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._append = store.append
        self._moment: tuple[int, str, int | None] | None = None
        self._event: WebhookEvent | None = None
        self._calls = 0
        self._pending: asyncio.Task[Any] | None = None
        self.fired = asyncio.Event()
        for name in HOOKED:
            setattr(store, name, self._hook(getattr(store, name)))

    def _hook(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(call)
        async def hooked(*args: Any, **kwargs: Any) -> Any:
            index = self._calls
            self._calls += 1
            await self._at(index, "before")
            # The waits are the one place a subscription rests: the moment "after" one is its wake-up.
            result = await call(*args, **kwargs)
            await self._at(index, "after")
            return result

        return hooked

    def arm(self, moment: tuple[int, str, int | None], event: WebhookEvent) -> None:
        self._moment, self._event, self._calls = moment, event, 0
        self.fired.clear()

    async def _at(self, index: int, side: str) -> None:
        if self._moment is None or self._moment[:2] != (index, side):
            return
        await self.fire()

    async def fire(self) -> None:
        """Store the armed event now (if a moment did not already), as the moment says."""
        if self._moment is None or self._event is None:
            return
        how, event = self._moment[2], self._event
        self._moment = None
        self.fired.set()
        if how is None:
            await self._append(event)
            return
        self._pending = asyncio.ensure_future(self._append(event))
        for _ in range(how):
            await asyncio.sleep(0)

    async def reached(self) -> None:
        """Wait until the armed moment came, or else until the subscription rests (no store call for a while,
        once it made one): then store the event, as a moment after the subscription."""
        loop = asyncio.get_running_loop()
        started = quiet_since = loop.time()
        seen = -1
        while not self.fired.is_set():
            now = loop.time()
            if self._calls != seen:
                seen, quiet_since = self._calls, now
            elif now - quiet_since > QUIET_S and (seen > 0 or now - started > 1):
                await self.fire()
                return
            await asyncio.sleep(0.005)

    async def settled(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None


@pytest.fixture(params=list(STORES))
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Server, Interleaver]]:
    url = STORES[request.param](tmp_path)
    if request.param == "redis":
        require_redis(url)
        delete_prefix(url)
    store = create_store(StoreConfig.from_url(url))
    interleaver = Interleaver(store)  # before the server wraps the store's methods in its own timing
    try:
        async with in_process_server(url, store=store, heartbeat_s=0.2) as server:
            yield server, interleaver
    finally:
        if request.param == "redis":
            delete_prefix(url)


def _event(repository_id: str, delivery_id: str, name: str) -> WebhookEvent:
    return WebhookEvent(
        repository_id=repository_id,
        delivery_id=delivery_id,
        event_type="push",
        body=b'{"delivery": "' + delivery_id.encode() + b'"}',
        headers=(("X-GitHub-Event", "push"), ("X-GitHub-Delivery", delivery_id)),
        received_at_ns=1,
        repository_name=name,
    )


def _rounds() -> list[tuple[int, tuple[int, str, int | None]]]:
    return list(enumerate(MOMENTS * REPEATS))


async def _legacy_events(call: Any, count: int) -> list[str]:
    """The delivery ids of the next ``count`` events of a FetchWebhookEvents call, heartbeats skipped."""
    ids: list[str] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while len(ids) < count:
            response = await call.read()
            assert response is not grpc.aio.EOF, "the stream ended"
            ids.extend(event.event_id for event in response.webhook_events)
    return ids


async def test_the_original_stream_never_misses_an_event_stored_as_it_subscribes(
    served: tuple[Server, Interleaver],
) -> None:
    server, interleaver = served
    missed = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=OPTIONS) as channel:
        stub = pb_grpc.GitstafetteStub(channel)
        for number, moment in _rounds():
            repository = str(900_000_000 + number)
            first, second = _event(repository, f"r{number}-1", ""), _event(repository, f"r{number}-2", "")
            interleaver.arm(moment, first)
            call = stub.FetchWebhookEvents(pb.WebhookEventsRequest(client_id=f"old-{number}", repository_id=repository))
            try:
                await interleaver.reached()
                got = await _legacy_events(call, 1)
                await interleaver.settled()
                await interleaver.store.append(second)
                got += await _legacy_events(call, 1)
            except TimeoutError:
                got = ["(nothing more)"]
            finally:
                await interleaver.settled()
                call.cancel()
            if got != [first.delivery_id, second.delivery_id]:
                missed.append((moment, got))
    assert not missed, f"{len(missed)} of {len(_rounds())} rounds: (moment, what the stream gave) {missed[:5]}"


@pytest.mark.parametrize("by", ["id", "name"])
async def test_the_acknowledged_stream_never_misses_an_event_stored_as_it_subscribes(
    served: tuple[Server, Interleaver], by: str
) -> None:
    server, interleaver = served
    missed = []
    for number, moment in _rounds():
        repository, name = str(910_000_000 + number), f"race/repository-{by}-{number}"
        first, second = _event(repository, f"r{number}-1", name), _event(repository, f"r{number}-2", name)
        interleaver.arm(moment, first)
        spec = repository if by == "id" else name
        async with AckStream(f"127.0.0.1:{server.grpc_port}", f"ack-{by}-{number}", [spec]) as stream:
            got: list[str] = []
            try:
                await interleaver.reached()
                received = await stream.next_event(EVENT_TIMEOUT_S)
                if received is not None:
                    got.append(received.webhook_event.event_id)
                    await stream.ack(received)
                    await interleaver.settled()
                    await interleaver.store.append(second)
                    received = await stream.next_event(EVENT_TIMEOUT_S)
                    if received is not None:
                        got.append(received.webhook_event.event_id)
            finally:
                await interleaver.settled()
        if got != [first.delivery_id, second.delivery_id]:
            missed.append((moment, got))
    assert not missed, f"{len(missed)} of {len(_rounds())} rounds: (moment, what the stream gave) {missed[:5]}"


async def test_webhooks_posted_as_original_streams_open_all_arrive(tmp_path: Path) -> None:
    """Black box, as a stock client meets it: a real server process, a FetchWebhookEvents stream per fresh
    repository and client id, and its webhook POSTed 0-15 ms after the stream was opened."""
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    missed = []
    with running_server("--store", f"sqlite:///{tmp_path / 'events.db'}") as server:
        async with (
            grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as channel,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            stub = pb_grpc.GitstafetteStub(channel)
            for number in range(BLACK_BOX_ROUNDS):
                repository, delivery = str(920_000_000 + number), f"black-box-{number}"
                call = stub.FetchWebhookEvents(
                    pb.WebhookEventsRequest(client_id=f"bb-{number}", repository_id=repository)
                )
                await asyncio.sleep((number % 16) / 1000)
                posted = await http.post(
                    "/v1/github/",
                    headers={
                        **headers,
                        "X-GitHub-Delivery": delivery,
                        "X-GitHub-Hook-Installation-Target-ID": repository,
                    },
                    content=body,
                )
                assert posted.status_code == 201, posted.text
                try:
                    got = await _legacy_events(call, 1)
                except TimeoutError:
                    got = []
                finally:
                    call.cancel()
                if got != [delivery]:
                    missed.append((number, got))
    assert not missed, f"{len(missed)} of {BLACK_BOX_ROUNDS} webhooks never reached their stream: {missed[:5]}"
