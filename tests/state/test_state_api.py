"""The GraphQL state API on a real server, for each store: what a scripted run leaves, paging, refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gitstafette import __version__
from tests.client.utils import wait_until
from tests.grpc_clients import AckStream
from tests.redis_utils import SERVER_TESTS_DB, delete_prefix, redis_url, require_redis
from tests.security.utils import (
    OTHER,
    PUSH,
    REPO,
    Token,
    make_token,
    new_secret,
    post_signed,
    signed_request,
    write_tokens,
)
from tests.utils import ServerProcess, running_server

#: store kind → its URL in a test's temporary folder
STORES = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'events.db'}",
    "redis": lambda tmp: redis_url(SERVER_TESTS_DB),
}

EVENT_FIELDS = "id sequence deliveryId eventType repositoryId bodySize receivedAt headers { name value }"


@pytest.fixture(params=list(STORES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    kind, url = request.param, STORES[request.param](tmp_path)
    if kind == "redis":
        require_redis(url)  # fails under GITSTAFETTE_REQUIRE_REDIS=1, else skips
        delete_prefix(url)
    yield kind, url
    if kind == "redis":
        delete_prefix(url)


class Api:
    """The server's /graphql with one token."""

    def __init__(self, server: ServerProcess, token: str | None) -> None:
        self.url = f"{server.url}/graphql"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, query: str, **variables: Any) -> httpx.Response:
        return httpx.post(self.url, json={"query": query, "variables": variables}, headers=self.headers, timeout=10)

    def data(self, query: str, **variables: Any) -> dict[str, Any]:
        response = self.post(query, **variables)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert "errors" not in answer, answer
        data: dict[str, Any] = answer["data"]
        return data

    def errors(self, query: str, **variables: Any) -> list[str]:
        """The error messages of a refused query; its data must hold nothing."""
        response = self.post(query, **variables)
        assert response.status_code in (200, 400), response.text
        answer = response.json()
        assert answer.get("errors"), answer
        assert not any((answer.get("data") or {}).values()), answer
        return [error["message"] for error in answer["errors"]]


def _state_server(tmp_path: Path, store: str, *tokens: Token, extra: tuple[str, ...] = ()) -> tuple[Any, str]:
    admin = new_secret("admin")
    (tmp_path / "admin-token").write_text(admin)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", *tokens)
    args = ("--store", store, "--tokens-file", str(tokens_file), "--admin-token-file", str(tmp_path / "admin-token"))
    return running_server(*args, "--state-api", *extra), admin


async def test_queries_show_what_the_store_holds_after_a_scripted_run(
    tmp_path: Path, store_url: tuple[str, str]
) -> None:
    kind, url = store_url
    jenkins = make_token("jenkins", REPO)
    server_context, admin_token = _state_server(tmp_path, url, jenkins)
    with server_context as server:
        delivered = [post_signed(server, None) for _ in range(3)]
        assert all(response.status_code == 201 for response, _ in delivered)
        assert post_signed(server, None, repository_id=OTHER)[0].status_code == 201
        ids = [delivery_id for _, delivery_id in delivered]
        admin = Api(server, admin_token)

        async with AckStream(server.grpc_target, "jenkins", [REPO], token=jenkins.value) as stream:
            one, two, three = [await stream.next_event() for _ in range(3)]
            assert one is not None and two is not None and three is not None
            await stream.ack(one)
            await stream.fail(two, "target answered 410", 410)

            def lanes() -> list[dict[str, Any]]:
                clients = admin.data(
                    "{ clients { clientId connectionId address connectedSince subscribed"
                    " lanes { repositoryId cursor backlog inFlight standby } } }"
                )["clients"]
                return [lane for client in clients for lane in client["lanes"]]

            wait_until(lambda: [lane["cursor"] for lane in lanes()] == [2], message="the lane's cursor")
            (client,) = admin.data("{ clients { clientId address subscribed connectedSince } }")["clients"]
            assert client["clientId"] == "jenkins" and client["subscribed"] == [REPO]
            assert "127.0.0.1" in client["address"] and client["connectedSince"]
            assert lanes() == [{"repositoryId": REPO, "cursor": 2, "backlog": 1, "inFlight": 1, "standby": False}]

            def jenkins_cursor() -> list[dict[str, Any]]:
                repositories = admin.data("{ repositories { id cursors { clientId cursor backlog } } }")
                return [r["cursors"] for r in repositories["repositories"] if r["id"] == REPO][0]

            wait_until(lambda: jenkins_cursor() == [{"clientId": "jenkins", "cursor": 2, "backlog": 1}])

            server_info = admin.data("{ server { version serverId store { kind healthy error } } }")["server"]
            assert server_info["version"] == __version__
            assert server_info["store"] == {"kind": kind, "healthy": True, "error": None}

            repositories = admin.data(
                "{ repositories { id name watched eventCount firstSequence lastSequence lastDeliveryAt } }"
            )["repositories"]
            by_id = {r["id"]: r for r in repositories}
            assert set(by_id) == {REPO, OTHER}
            assert by_id[REPO]["eventCount"] == 3 and by_id[REPO]["lastSequence"] == 3
            assert by_id[REPO]["firstSequence"] == 1 and by_id[REPO]["watched"] is True
            assert by_id[REPO]["lastDeliveryAt"] is not None and by_id[OTHER]["eventCount"] == 1

            first_page = (
                "query($r: String!) { events(repository: $r, first: 2) {"
                f" edges {{ cursor node {{ {EVENT_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
            )
            page = admin.data(first_page, r=REPO)["events"]
            assert [e["node"]["deliveryId"] for e in page["edges"]] == ids[:2]
            assert page["pageInfo"]["hasNextPage"] is True
            rest = admin.data(
                "query($r: String!, $a: String) { events(repository: $r, after: $a, first: 2) {"
                " edges { node { deliveryId } } pageInfo { hasNextPage } } }",
                r=REPO,
                a=page["pageInfo"]["endCursor"],
            )["events"]
            assert [e["node"]["deliveryId"] for e in rest["edges"]] == ids[2:]
            assert rest["pageInfo"]["hasNextPage"] is False

            event = admin.data(f'{{ event(id: "{REPO}:1") {{ {EVENT_FIELDS} body }} }}')["event"]
            assert event["deliveryId"] == ids[0] and event["eventType"] == "push"
            assert event["bodySize"] == len(PUSH.read_bytes()) and event["body"] == PUSH.read_text()
            headers = {h["name"]: h["value"] for h in event["headers"]}
            assert headers["X-GitHub-Delivery"] == ids[0]
            assert admin.data(f'{{ event(id: "{REPO}:99") {{ id }} }}')["event"] is None

            letters = admin.data("{ deadLetters { eventId clientId sequence deliveryId reason statusCode } }")
            assert letters["deadLetters"] == [
                {
                    "eventId": f"{REPO}:2",
                    "clientId": "jenkins",
                    "sequence": 2,
                    "deliveryId": ids[1],
                    "reason": "target answered 410",
                    "statusCode": 410,
                }
            ]

            def trail(sequence: int) -> list[tuple[str, str]]:
                entries = admin.data(f'{{ auditTrail(event: "{REPO}:{sequence}") {{ clientId action at }} }}')
                return [(e["clientId"], e["action"]) for e in entries["auditTrail"]]

            assert trail(1) == [("jenkins", "sent"), ("jenkins", "acknowledged")]
            assert trail(2) == [("jenkins", "sent"), ("jenkins", "failed")]
            assert trail(3) == [("jenkins", "sent")]
    assert admin_token not in server.log() and jenkins.value not in server.log()


def test_paging_with_after_over_1000_events_gives_each_exactly_once(tmp_path: Path, store_url: tuple[str, str]) -> None:
    _, url = store_url
    server_context, admin_token = _state_server(tmp_path, url, make_token("jenkins", REPO))
    with server_context as server, httpx.Client(base_url=server.url, timeout=10) as http:
        posted = []
        for _ in range(1000):
            headers, body, _ = signed_request(None)
            assert http.post("/v1/github/", headers=headers, content=body).status_code == 201
            posted.append(headers["X-GitHub-Delivery"])
        admin = Api(server, admin_token)
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            page = admin.data(
                "query($r: String!, $a: String) { events(repository: $r, after: $a, first: 100) {"
                " edges { node { deliveryId sequence } } pageInfo { hasNextPage endCursor } } }",
                r=REPO,
                a=after,
            )["events"]
            seen.extend(e["node"]["deliveryId"] for e in page["edges"])
            pages += 1
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert seen == posted and pages == 10
        # A filter that matches nothing still ends: each page scans a bounded stretch and says where it stopped.
        filtered = (
            'query($r: String!) { events(repository: $r, first: 10, eventType: "issues") {'
            " edges { cursor } pageInfo { hasNextPage } } }"
        )
        none = admin.data(filtered, r=REPO)["events"]
        assert none == {"edges": [], "pageInfo": {"hasNextPage": False}}


def test_refusals(tmp_path: Path) -> None:
    jenkins = make_token("jenkins", REPO)
    server_context, admin_token = _state_server(tmp_path, "memory://", jenkins)
    with server_context as server:
        assert post_signed(server, None)[0].status_code == 201
        assert post_signed(server, None, repository_id=OTHER)[0].status_code == 201
        query = "{ repositories { id } }"

        # no token, an unknown one: 401, nothing else said
        for token in (None, "wrong"):
            response = Api(server, token).post(query)
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "data" not in response.json()

        # a client token sees its own repositories only, and never another's events
        client = Api(server, jenkins.value)
        assert client.data(query)["repositories"] == [{"id": REPO}]
        for refused in (
            f'{{ events(repository: "{OTHER}") {{ edges {{ node {{ deliveryId }} }} }} }}',
            f'{{ event(id: "{OTHER}:1") {{ deliveryId }} }}',
            f'{{ auditTrail(event: "{OTHER}:1") {{ clientId }} }}',
            f'{{ deadLetters(repository: "{OTHER}") {{ clientId }} }}',
        ):
            (message,) = client.errors(refused)
            assert f"may not read repository {OTHER}" in message
        assert client.data(f'{{ event(id: "{REPO}:1") {{ bodySize }} }}')["event"]["bodySize"] > 0
        # the body needs read:payload, which only the admin token has
        (message,) = client.errors(f'{{ event(id: "{REPO}:1") {{ body }} }}')
        assert "read:payload" in message

        admin = Api(server, admin_token)
        # the page size cap
        (message,) = admin.errors(f'{{ events(repository: "{REPO}", first: 101) {{ edges {{ cursor }} }} }}')
        assert "first must be between 1 and 100" in message
        # the depth limit: Event.repository makes the schema a cycle
        deep = (
            f'{{ event(id: "{REPO}:1") {{ repository {{ events {{ edges {{ node {{ repository {{ events {{ edges'
            " { cursor } } } } } } } } }"
        )
        messages = admin.errors(deep)
        assert any("exceeds maximum operation depth" in m for m in messages), messages
        # the token limit
        huge = "{ " + " ".join(f"a{i}: server {{ version }}" for i in range(700)) + " }"
        assert admin.post(huge).json()["errors"]
        # the alias limit
        aliased = "{ " + " ".join(f"a{i}: server {{ version }}" for i in range(30)) + " }"
        assert any("aliases" in m for m in admin.errors(aliased))
        # a cursor of nobody's making
        (message,) = admin.errors(f'{{ events(repository: "{REPO}", after: "bm9wZQ") {{ edges {{ cursor }} }} }}')
        assert "not a cursor" in message
        # introspection is on here; GraphiQL is not
        assert admin.data("{ __schema { queryType { name } } }")["__schema"]["queryType"]["name"] == "Query"
        assert httpx.get(f"{server.url}/graphql", headers={"Accept": "text/html"}).status_code != 200
    for secret in (admin_token, jenkins.value):
        assert secret not in server.log()


def test_introspection_switched_off_and_graphiql_switched_on(tmp_path: Path) -> None:
    server_context, admin_token = _state_server(
        tmp_path,
        "memory://",
        make_token("jenkins", REPO),
        extra=("--no-state-api-introspection", "--state-api-graphiql"),
    )
    with server_context as server:
        admin = Api(server, admin_token)
        assert any("introspection" in m.lower() for m in admin.errors("{ __schema { queryType { name } } }"))
        assert admin.data("{ server { version } }")["server"]["version"] == __version__
        page = httpx.get(f"{server.url}/graphql", headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 200 and "graphiql" in page.text.lower()


def test_the_state_api_is_off_unless_asked_for() -> None:
    with running_server("--store", "memory://") as server:
        response = httpx.post(f"{server.url}/graphql", json={"query": "{ server { version } }"}, timeout=10)
        assert response.status_code == 404


async def test_websockets_speak_graphql_transport_ws_with_the_token_in_connection_init(tmp_path: Path) -> None:
    jenkins = make_token("jenkins", REPO)
    server_context, admin_token = _state_server(tmp_path, "memory://", jenkins)
    with server_context as server:
        url = f"ws://127.0.0.1:{server.http_port}/graphql"

        async def connection_init(payload: dict[str, str]) -> tuple[int | None, dict[str, Any] | None]:
            """(close code, None) when the server closed the socket, else (None, its answer)."""
            async with connect(url, subprotocols=[Subprotocol("graphql-transport-ws")]) as socket:
                await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
                try:
                    return None, json.loads(await asyncio.wait_for(socket.recv(), 10))
                except ConnectionClosed as closed:
                    return (closed.rcvd.code if closed.rcvd else None), None

        for refused in ({}, {"authorization": "Bearer wrong"}):
            assert await connection_init(refused) == (4401, None)
        for token in (admin_token, jenkins.value):
            assert await connection_init({"authorization": f"Bearer {token}"}) == (None, {"type": "connection_ack"})
        # The legacy graphql-ws protocol is not spoken: the socket is closed with 4406.
        with pytest.raises(ConnectionClosed) as legacy:
            async with connect(url, subprotocols=[Subprotocol("graphql-ws")]) as socket:
                await asyncio.wait_for(socket.recv(), 10)
        assert legacy.value.rcvd is not None and legacy.value.rcvd.code == 4406
    assert admin_token not in server.log() and jenkins.value not in server.log()
